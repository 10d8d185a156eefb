`timescale 1ns / 1ps
// Overflow (docs/datapath.md §3): a signed IN_W-bit value into an OUT_W-bit code.
// Combinational. `hit` is 1 when the code differs from the value (clamped, zeroed or
// wrapped), what a saturation counter counts. MODE: an OVF_* code, or MODE_PORT for `mode`.
module ovf_sat #(
    parameter integer IN_W = 16,
    parameter integer OUT_W = 8,
    parameter integer OUT_SIGNED = 1,
    parameter integer MODE = -1
) (
    input  wire [IN_W-1:0]  v,      // two's complement
    input  wire [1:0]       mode,
    output wire [OUT_W-1:0] q,
    output wire             hit
);
`include "edgedfa_modes.vh"
    localparam integer W = (IN_W > OUT_W ? IN_W : OUT_W) + 2;
    localparam [W-1:0] ONE = 1;
    localparam signed [W-1:0] HI = OUT_SIGNED ? (ONE << (OUT_W - 1)) - ONE : (ONE << OUT_W) - ONE;
    localparam signed [W-1:0] LO = OUT_SIGNED ? -(ONE << (OUT_W - 1)) : {W{1'b0}};
    // AP_SAT_SYM never produces the most negative code of a signed format
    localparam signed [W-1:0] LO_SYM = OUT_SIGNED ? -HI : {W{1'b0}};

    wire [1:0] m = (MODE == MODE_PORT) ? mode : MODE;
    wire signed [W-1:0] x = {{(W - IN_W){v[IN_W-1]}}, v};
    wire above = x > HI;
    wire below = x < LO;
    wire below_sym = x < LO_SYM;
    wire signed [W-1:0] lo_m = (m == OVF_AP_SAT_SYM) ? LO_SYM : LO;
    wire out = above | ((m == OVF_AP_SAT_SYM) ? below_sym : below);
    reg signed [W-1:0] r;
    always @* begin
        if (m == OVF_AP_WRAP || !out) r = x;
        else if (m == OVF_AP_SAT_ZERO) r = {W{1'b0}};
        else r = above ? HI : lo_m;
    end
    assign q = r[OUT_W-1:0];
    assign hit = out;
endmodule
