`timescale 1ns / 1ps
// Max tracker + leading-one detector (docs/datapath.md §7 `narrow`, §12 normalized update):
// over a streamed tensor (LANES codes per cycle, `clear` before its first element) it keeps
// max|x| and `bitlen` = bitlen(max|x|) (0 for an all-zero tensor), what a block-exponent
// or exponent-management unit reads, and counts the elements whose `flag` is set (e.g. a
// requant unit's `sat`: how many codes hit the rails). Pipeline: |x| and the lane
// maximum | running maximum and count; results final LATENCY 2 cycles after the last input.
module max_tracker #(
    parameter integer LANES = 1,
    parameter integer IN_W = 32,
    parameter integer CNT_W = 24,
    parameter integer BL_W = 7  // holds IN_W
) (
    input  wire                  clk,
    input  wire                  rst,
    input  wire                  clear,
    input  wire                  in_valid,
    input  wire [LANES*IN_W-1:0] din,
    input  wire [LANES-1:0]      flag,
    output reg  [IN_W-1:0]       maxabs,
    output reg  [BL_W-1:0]       bitlen,
    output reg  [CNT_W-1:0]      count,
    output reg                   out_valid  // the registers above include an input this cycle
);
    // stage 1: the largest |x| among the lanes and the number of flags this cycle
    reg [IN_W-1:0] lane_max;
    reg [CNT_W-1:0] lane_flags;
    reg v1, clear1;
    integer j;
    reg [IN_W-1:0] m, a;
    reg [CNT_W-1:0] n;
    always @* begin
        m = {IN_W{1'b0}};
        n = {CNT_W{1'b0}};
        for (j = 0; j < LANES; j = j + 1) begin
            a = din[j*IN_W + IN_W - 1] ? -din[j*IN_W +: IN_W] : din[j*IN_W +: IN_W];
            if (a > m) m = a;
            n = n + flag[j];
        end
    end
    always @(posedge clk) begin
        v1 <= rst ? 1'b0 : in_valid;
        clear1 <= rst | clear;
        lane_max <= m;
        lane_flags <= n;
    end
    // stage 2: running maximum and count, bitlen of the new maximum (leading-one detector)
    wire [IN_W-1:0] base = clear1 ? {IN_W{1'b0}} : maxabs;
    wire [IN_W-1:0] next = (v1 && lane_max > base) ? lane_max : base;
    reg [BL_W-1:0] lead;
    always @* begin
        lead = {BL_W{1'b0}};
        for (j = 0; j < IN_W; j = j + 1)
            if (next[j]) lead = j + 1;
    end
    always @(posedge clk) begin
        maxabs <= next;
        bitlen <= lead;
        count <= (clear1 ? {CNT_W{1'b0}} : count) + (v1 ? lane_flags : {CNT_W{1'b0}});
        out_valid <= v1 & ~rst;
    end
endmodule
