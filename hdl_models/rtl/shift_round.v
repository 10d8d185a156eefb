`timescale 1ns / 1ps
// Shift and round (docs/datapath.md §2), split in two combinational halves so a unit can
// put a pipeline register between them: sr_align (barrel shifter) and sr_round (+up).
//
// sr_align: x * 2^-s for a run-time signed s. A left shift (s < 0) is clamped to L_MAX
// bits (a caller saturating to W bits passes W + 1: any non-zero value shifted further
// overflows the same way, and wraps to 0), a right shift to 63. Outputs floor(x * 2^-s),
// `half` (the dropped residual r >= 2^(s-1)) and `rest` (r has bits below the half), all the
// deterministic modes need; for STOCHASTIC the top 32 bits of the dropped fraction and
// `keep`, the mask of a 32-bit word's top min(s, 32) bits: it rounds up on the carry of
// frac + (word & keep).
module sr_align #(
    parameter integer IN_W = 32,
    parameter integer SH_W = 8,
    parameter integer L_MAX = 9
) (
    input  wire [IN_W-1:0]       x,
    input  wire [SH_W-1:0]       s,
    output wire [IN_W+L_MAX-1:0] q,
    output wire                  half,
    output wire                  rest,
    output wire [31:0]           frac,
    output wire [31:0]           keep,
    output wire                  neg
);
    localparam integer VW = IN_W + L_MAX + 32;
    wire signed [15:0] se = {{(16 - SH_W){s[SH_W-1]}}, s};
    wire signed [15:0] sc = (se < -L_MAX) ? -L_MAX : (se > 63) ? 16'sd63 : se;
    wire [15:0] amt = sc + L_MAX;  // 0 .. L_MAX + 63
    wire signed [VW-1:0] v = {x, {(L_MAX + 32){1'b0}}};
    wire signed [VW-1:0] y = v >>> amt;
    assign q = y[VW-1:32];
    assign frac = y[31:0];
    // half and rest straight from x (sign-extended), not from the shifted fraction: a bit
    // select and a masked OR, so the deterministic modes need no fraction shifter
    wire [15:0] hb = sc - 16'sd1;  // the half's bit position when s >= 1
    assign half = (sc <= 0) ? 1'b0 : (hb >= IN_W) ? x[IN_W-1] : x[hb];
    wire [15:0] nb = (sc <= 1) ? 16'd0 : (hb > IN_W) ? IN_W : hb;  // x's bits below the half
    reg [15:0] tz;  // trailing zeros of x (IN_W for 0): rest = some bit below the half is set
    integer i;
    always @* begin
        tz = IN_W;
        for (i = IN_W - 1; i >= 0; i = i - 1) if (x[i]) tz = i;
    end
    assign rest = tz < nb;  // past IN_W the sign bits repeat x[IN_W-1]
    wire [5:0] top = (sc <= 0) ? 6'd0 : (sc >= 32) ? 6'd32 : sc[5:0];
    wire [63:0] mask = {32'hffffffff, 32'h0} >> top;
    assign keep = mask[31:0];
    assign neg = x[IN_W-1];
endmodule

// sr_round: q + up for the rounding mode (RND: an RND_* code, or MODE_PORT for `mode`).
module sr_round #(
    parameter integer QW = 41,
    parameter integer RND = -1
) (
    input  wire [QW-1:0] q,
    input  wire          half,
    input  wire          rest,
    input  wire [31:0]   frac,    // STOCHASTIC only
    input  wire [31:0]   u,       // the random word & keep (STOCHASTIC)
    input  wire          neg,
    input  wire [2:0]    mode,
    output wire [QW:0]   y
);
`include "edgedfa_modes.vh"
    wire [2:0] m = (RND == MODE_PORT) ? mode : RND;
    wire carry = u > ~frac;                  // frac + u >= 2^32
    reg up;
    always @* begin
        case (m)
            RND_AP_TRN:         up = 1'b0;
            RND_AP_TRN_ZERO:    up = neg & (half | rest);
            RND_AP_RND:         up = half;
            RND_AP_RND_ZERO:    up = half & (rest | neg);
            RND_AP_RND_MIN_INF: up = half & rest;
            RND_AP_RND_INF:     up = half & (rest | ~neg);
            RND_AP_RND_CONV:    up = half & (rest | q[0]);
            default:            up = carry;  // RND_STOCHASTIC
        endcase
    end
    assign y = {q[QW-1], q} + {{QW{1'b0}}, up};
endmodule
