`timescale 1ns / 1ps
// lowbias32 (docs/datapath.md §5), three pipeline stages: xorshift + multiply |
// xorshift + multiply | xorshift. One word per cycle, LATENCY 3.
module mix32 (
    input  wire        clk,
    input  wire [31:0] x,
    output reg  [31:0] y
);
    reg [31:0] a, b;
    wire [31:0] x1 = x ^ (x >> 16);
    wire [31:0] a1 = a ^ (a >> 15);
    always @(posedge clk) begin
        a <= x1 * 32'h7feb352d;  // mod 2^32: only the low half is kept
        b <= a1 * 32'h846ca68b;
        y <= b ^ (b >> 16);
    end
endmodule

// PRNG unit (hdl_models/prng_unit.py): the key register
// key = mix32(mix32(mix32(seed ^ 0x9e3779b9) ^ stream) ^ step), computed by its own mix32
// from `key_start` in KEY_LATENCY 10 cycles (so the next tensor's key can be prepared while words of
// the current one stream), and LANES hash lanes: word(idx + j) = mix32(key ^ (idx + j))
// on lane j. LATENCY 3 from `idx_valid` to `word_valid`, LANES words per cycle.
module prng_unit #(
    parameter integer LANES = 1
) (
    input  wire                clk,
    input  wire                rst,
    input  wire                key_start,
    input  wire [31:0]         seed,
    input  wire [31:0]         stream,
    input  wire [31:0]         step,
    output reg                 key_ready,
    output reg  [31:0]         key,
    input  wire                idx_valid,
    input  wire [31:0]         idx,
    output wire                word_valid,
    output wire [LANES*32-1:0] words
);
    // key chain: three passes through one mix32 (3 cycles each), then the key register
    reg [31:0] stream_r, step_r;
    reg [3:0] t;  // cycles since key_start; 0 = idle
    wire [31:0] h;
    wire [31:0] chain = key_start ? seed ^ 32'h9e3779b9 : (t == 4'd3) ? h ^ stream_r : h ^ step_r;
    mix32 key_hash (.clk(clk), .x(chain), .y(h));
    always @(posedge clk) begin
        if (rst) begin
            t <= 4'd0;
            key_ready <= 1'b0;
        end else if (key_start) begin
            stream_r <= stream;
            step_r <= step;
            t <= 4'd1;
            key_ready <= 1'b0;
        end else if (t != 4'd0) begin
            t <= (t == 4'd9) ? 4'd0 : t + 4'd1;
            if (t == 4'd9) begin
                key <= h;
                key_ready <= 1'b1;
            end
        end
    end
    reg [2:0] v;
    always @(posedge clk) v <= rst ? 3'd0 : {v[1:0], idx_valid};
    assign word_valid = v[2];
    genvar j;
    generate
        for (j = 0; j < LANES; j = j + 1) begin : lane
            wire [31:0] i = idx + j;  // element indices are taken modulo 2^32
            mix32 hash (.clk(clk), .x(key ^ i), .y(words[j*32 +: 32]));
        end
    endgenerate
endmodule
