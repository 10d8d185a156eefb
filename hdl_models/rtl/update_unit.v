`timescale 1ns / 1ps
// Weight-update unit (hdl_models/update_unit.py; docs/datapath.md §12), LANES parameters
// per cycle:
//   p_next = ovf(p - round(g * 2^-shift))                                   (MOMENTUM = 0)
//   v_next = v - (v >>> mom_shift) + round_conv(g * 2^-(shift - 16))        (MOMENTUM = 1)
//   p_next = ovf(p - round(v_next * 2^-16))
// `shift` (F_g - F_p + lr_shift, or the normalized shift from a max tracker's bitlen) and
// `mom_shift` are run-time ports; RND / OVF fixed or MODE_PORT. STOCHASTIC words come from
// the unit's own PRNG lanes: word(seed, stream, step, idx + lane), keyed by `key_start`
// (KEY_LATENCY 10) before the tensor. The velocity register is V_W bits: exact while
// |v| < 2^(V_W-1) (the model's velocity is unbounded). `sat`: p_next differs from the exact
// difference (the model's saturation count). LATENCY 5 (the PRNG's 3 stages are hidden:
// its words meet the data at the rounding stage), one parameter per lane per cycle.
module update_unit #(
    parameter integer LANES = 1,
    parameter integer G_W = 32,
    parameter integer P_W = 8,
    parameter integer V_W = 48,
    parameter integer SH_W = 8,
    parameter integer M_W = 5,
    parameter integer RND = -1,
    parameter integer OVF = -1,
    parameter integer MOMENTUM = 0
) (
    input  wire                 clk,
    input  wire                 rst,
    input  wire                 key_start,
    input  wire [31:0]          seed,
    input  wire [31:0]          stream,
    input  wire [31:0]          step,
    output wire                 key_ready,
    input  wire                 in_valid,
    input  wire [31:0]          idx,         // flat index of lane 0's parameter
    input  wire [LANES*G_W-1:0] g,
    input  wire [LANES*P_W-1:0] p,
    input  wire [LANES*V_W-1:0] v,
    input  wire [SH_W-1:0]      shift,
    input  wire [M_W-1:0]       mom_shift,
    input  wire [2:0]           rnd_mode,
    input  wire [1:0]           ovf_mode,
    output wire                 out_valid,
    output reg  [LANES*P_W-1:0] p_next,
    output wire [LANES*V_W-1:0] v_next,
    output reg  [LANES-1:0]     sat
);
`include "edgedfa_modes.vh"
    localparam integer NEEDS_WORDS = (RND == MODE_PORT) || (RND == RND_STOCHASTIC);
    localparam integer L_P = P_W + 1;                       // left shifts beyond this saturate alike
    localparam integer L_V = V_W;  // momentum term: any left shift by V_W is 0 modulo 2^V_W
    localparam integer CFG_W = SH_W + M_W + 5;

    // random words, 3 cycles after the index: they meet the data at the rounding stage (4)
    wire [LANES*32-1:0] words;
    generate
        if (NEEDS_WORDS) begin : rng
            prng_unit #(.LANES(LANES)) prng (
                .clk(clk), .rst(rst), .key_start(key_start), .seed(seed), .stream(stream), .step(step),
                .key_ready(key_ready), .key(), .idx_valid(in_valid), .idx(idx), .word_valid(), .words(words));
        end else begin : no_rng
            assign key_ready = 1'b1;
            assign words = {LANES*32{1'b0}};
        end
    endgenerate

    // valid and configuration travel with the data: stage k reads cfg_k
    localparam integer C_OVF = 0, C_RND = 2, C_MOM = 5, C_SH = 5 + M_W;
    wire [CFG_W-1:0] cfg1, cfg3, cfg4;
    pipe_delay #(.W(CFG_W), .N(1)) d1 (.clk(clk), .rst(rst), .d({shift, mom_shift, rnd_mode, ovf_mode}), .q(cfg1));
    pipe_delay #(.W(CFG_W), .N(2)) d3 (.clk(clk), .rst(rst), .d(cfg1), .q(cfg3));
    pipe_delay #(.W(CFG_W), .N(1)) d4 (.clk(clk), .rst(rst), .d(cfg3), .q(cfg4));
    reg [4:0] valid;
    always @(posedge clk) valid <= rst ? 5'd0 : {valid[3:0], in_valid};
    assign out_valid = valid[4];
    wire [M_W-1:0] mom1 = cfg1[C_MOM +: M_W];
    wire [2:0] rnd3 = cfg3[C_RND +: 3];
    wire [1:0] ovf4 = cfg4[C_OVF +: 2];
    localparam integer D_W = (V_W + 1 > G_W + L_P + 1 ? V_W + 1 : G_W + L_P + 1);  // delta

    genvar i;
    generate
        for (i = 0; i < LANES; i = i + 1) begin : lane
            wire [G_W-1:0] g0 = g[i*G_W +: G_W];
            wire [P_W-1:0] p3;  // the parameter, waiting for its delta at stage 4
            pipe_delay #(.W(P_W), .N(3)) dp (.clk(clk), .rst(rst), .d(p[i*P_W +: P_W]), .q(p3));
            wire [31:0] u3 = words[i*32 +: 32];
            wire [D_W-1:0] delta3;  // round(...) as it enters the subtractor
            if (MOMENTUM == 0) begin : plain
                // stages 1-2 hold g while the PRNG works; 3 aligns; 4 rounds and subtracts
                wire [G_W+SH_W-1:0] gs2;
                pipe_delay #(.W(G_W + SH_W), .N(2)) dg (.clk(clk), .rst(rst), .d({g0, shift}), .q(gs2));
                wire [G_W+L_P-1:0] q;
                wire [31:0] frac, keep;
                wire half, rest, neg;
                sr_align #(.IN_W(G_W), .SH_W(SH_W), .L_MAX(L_P)) align (
                    .x(gs2[G_W+SH_W-1:SH_W]), .s(gs2[SH_W-1:0]),
                    .q(q), .half(half), .rest(rest), .frac(frac), .keep(keep), .neg(neg));
                reg [G_W+L_P-1:0] q3;
                reg [31:0] frac3, keep3;
                reg half3, rest3, neg3;
                always @(posedge clk) begin
                    q3 <= q; half3 <= half; rest3 <= rest; frac3 <= frac; keep3 <= keep; neg3 <= neg;
                end
                wire [G_W+L_P:0] y;
                sr_round #(.QW(G_W + L_P), .RND(RND)) round (
                    .q(q3), .half(half3), .rest(rest3), .frac(frac3), .u(u3 & keep3), .neg(neg3), .mode(rnd3),
                    .y(y));
                assign delta3 = $signed(y);
                assign v_next = {LANES*V_W{1'b0}};
            end else begin : momentum
                // 1 aligns g by shift - 16; 2 rounds (AP_RND_CONV) and decays v; 3 adds
                wire signed [SH_W:0] sm = $signed(shift) - 16;
                wire [G_W+L_V-1:0] q;
                wire [31:0] frac, keep;
                wire half, rest, neg;
                sr_align #(.IN_W(G_W), .SH_W(SH_W + 1), .L_MAX(L_V)) align (
                    .x(g0), .s(sm), .q(q), .half(half), .rest(rest), .frac(frac), .keep(keep), .neg(neg));
                reg [G_W+L_V-1:0] q1;
                reg half1, rest1, neg1;
                reg [V_W-1:0] v1;
                always @(posedge clk) begin
                    q1 <= q; half1 <= half; rest1 <= rest; neg1 <= neg; v1 <= v[i*V_W +: V_W];
                end
                wire [G_W+L_V:0] term;
                sr_round #(.QW(G_W + L_V), .RND(RND_AP_RND_CONV)) conv (
                    .q(q1), .half(half1), .rest(rest1), .frac(32'd0), .u(32'd0), .neg(neg1), .mode(3'd0),
                    .y(term));
                wire signed [V_W-1:0] v1s = v1;
                wire [V_W-1:0] decay = v1s >>> mom1;  // arithmetic: a separate signed expression
                reg [V_W-1:0] term2, decayed2, vel3;
                always @(posedge clk) begin
                    term2 <= term[V_W-1:0];
                    decayed2 <= v1 - decay;
                    vel3 <= decayed2 + term2;
                end
                // stage 4: round(vel * 2^-16) with the stage's mode and word
                wire [V_W:0] vq;
                wire [31:0] vfrac, vkeep;
                wire vhalf, vrest, vneg;
                sr_align #(.IN_W(V_W), .SH_W(6), .L_MAX(1)) align16 (
                    .x(vel3), .s(6'd16), .q(vq), .half(vhalf), .rest(vrest), .frac(vfrac), .keep(vkeep), .neg(vneg));
                wire [V_W+1:0] vy;
                sr_round #(.QW(V_W + 1), .RND(RND)) round (
                    .q(vq), .half(vhalf), .rest(vrest), .frac(vfrac), .u(u3 & vkeep), .neg(vneg), .mode(rnd3),
                    .y(vy));
                assign delta3 = $signed(vy);
                pipe_delay #(.W(V_W), .N(2)) dv (.clk(clk), .rst(rst), .d(vel3), .q(v_next[i*V_W +: V_W]));
            end
            // stage 4: the exact difference; stage 5: overflow into P_W bits
            reg [D_W:0] raw4;
            always @(posedge clk)
                raw4 <= $signed(p3) - $signed(delta3);
            wire [P_W-1:0] code;
            wire hit;
            ovf_sat #(.IN_W(D_W + 1), .OUT_W(P_W), .OUT_SIGNED(1), .MODE(OVF)) ovf (
                .v(raw4), .mode(ovf4), .q(code), .hit(hit));
            always @(posedge clk) begin
                p_next[i*P_W +: P_W] <= code;
                sat[i] <= hit;
            end
        end
    endgenerate
endmodule
