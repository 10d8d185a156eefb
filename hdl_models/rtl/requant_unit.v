`timescale 1ns / 1ps
// Requantization unit (hdl_models/requant_unit.py; docs/datapath.md §2-§4): LANES lanes,
// each din * 2^-shift rounded then brought into OUT_W bits. `shift` (= F_in - F_out) is a
// run-time port, so a per-tensor exponent that moves during training needs no new
// hardware. RND / OVF: a fixed mode (RND_* / OVF_* code) or MODE_PORT for the run-time
// `rnd_mode` / `ovf_mode` ports. `rword`: one 32-bit random word per lane from the PRNG unit
// (STOCHASTIC). `sat`: the lane's code differs from the rounded value.
// Pipeline: align | round + overflow. LATENCY 2, one element per lane per cycle.
module requant_unit #(
    parameter integer LANES = 1,
    parameter integer IN_W = 32,
    parameter integer OUT_W = 8,
    parameter integer OUT_SIGNED = 1,
    parameter integer SH_W = 8,
    parameter integer RND = -1,
    parameter integer OVF = -1
) (
    input  wire                   clk,
    input  wire                   rst,
    input  wire                   in_valid,
    input  wire [LANES*IN_W-1:0]  din,
    input  wire [SH_W-1:0]        shift,
    input  wire [2:0]             rnd_mode,
    input  wire [1:0]             ovf_mode,
    input  wire [LANES*32-1:0]    rword,
    output reg                    out_valid,
    output reg  [LANES*OUT_W-1:0] dout,
    output reg  [LANES-1:0]       sat
);
    localparam integer L_MAX = OUT_W + 1;
    localparam integer QW = IN_W + L_MAX;
    reg v1;
    reg [2:0] rnd1;
    reg [1:0] ovf1;
    always @(posedge clk) begin
        v1 <= rst ? 1'b0 : in_valid;
        out_valid <= rst ? 1'b0 : v1;
        rnd1 <= rnd_mode;
        ovf1 <= ovf_mode;
    end
    genvar i;
    generate
        for (i = 0; i < LANES; i = i + 1) begin : lane
            wire [QW-1:0] q;
            wire [31:0] frac, keep;
            wire half, rest, neg;
            sr_align #(.IN_W(IN_W), .SH_W(SH_W), .L_MAX(L_MAX)) align (
                .x(din[i*IN_W +: IN_W]), .s(shift),
                .q(q), .half(half), .rest(rest), .frac(frac), .keep(keep), .neg(neg));
            reg [QW-1:0] q1;
            reg [31:0] frac1, u1;
            reg half1, rest1, neg1;
            always @(posedge clk) begin
                q1 <= q; half1 <= half; rest1 <= rest; frac1 <= frac; u1 <= rword[i*32 +: 32] & keep; neg1 <= neg;
            end
            wire [QW:0] y;
            sr_round #(.QW(QW), .RND(RND)) round (
                .q(q1), .half(half1), .rest(rest1), .frac(frac1), .u(u1), .neg(neg1), .mode(rnd1), .y(y));
            wire [OUT_W-1:0] code;
            wire hit;
            ovf_sat #(.IN_W(QW + 1), .OUT_W(OUT_W), .OUT_SIGNED(OUT_SIGNED), .MODE(OVF)) ovf (
                .v(y), .mode(ovf1), .q(code), .hit(hit));
            always @(posedge clk) begin
                dout[i*OUT_W +: OUT_W] <= code;
                sat[i] <= hit;
            end
        end
    endgenerate
endmodule
