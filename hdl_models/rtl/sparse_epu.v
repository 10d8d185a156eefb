`timescale 1ns / 1ps
// Sparse error-projection unit (hdl_models/error_projection_unit.py, kind "sparse";
// docs/datapath.md §10.2): wide[b, i] = sum_m v[i, m] * e[b, (j0[i] + m) mod C], m = 0..k-1,
// adders only for binary / ternary values (VALUES 0 / 1), a VB-bit multiplier for uniform
// (VALUES 2). Lane l projects target unit i = g*LANES + l of group g.
//
// Per group: FETCH (k + 4 cycles) gets j0[i] = (word_idx(i) * C) >> 32 and the k values
// value(word_val(i*k + m)) into the lane's registers: REGEN = 1 regenerates them with one
// mix32 lane each from the key registers (no feedback memory); REGEN = 0 reads them from a
// feedback table (fb_addr -> fb_data one cycle later: word i*(k+1) holds j0, the next k
// words the values), aligned to the same timing. ACC (B*k cycles): per sample b, per tap m,
// one read of the error memory (e_addr = e_base + b*C + j -> e_data one cycle later) and one
// add. Results leave per sample b of each group in order (out_b, out_i0).
// A projection takes ceil(n_target/LANES) * (k + 4 + B*k) + 1 cycles from `start` to its
// last result (hdl_models ErrorProjectionUnit.adder_cycles).
module sparse_epu #(
    parameter integer LANES = 2,
    parameter integer E_W = 8,      // error codes
    parameter integer VALUES = 0,   // 0 binary, 1 ternary, 2 uniform
    parameter integer VB = 8,       // uniform value bits
    parameter integer K_MAX = 4,
    parameter integer C_W = 8,      // source elements per sample < 2^C_W
    parameter integer N_W = 16,     // target units per sample < 2^N_W
    parameter integer BB_W = 6,     // batch < 2^BB_W
    parameter integer A_W = 16,     // error and feedback memory addresses
    parameter integer REGEN = 1,
    parameter integer W_W = E_W + VB + 3, // wide results: E_W + value bits + ceil(log2 K_MAX)
    parameter integer VV = VALUES == 2 ? VB : 2,     // (derived) signed value register bits
    parameter integer FB_W = C_W > VV ? C_W : VV     // (derived) feedback table word
) (
    input  wire                  clk,
    input  wire                  rst,
    input  wire                  start,
    input  wire [N_W-1:0]        n_target,
    input  wire [C_W-1:0]        n_src,
    input  wire [3:0]            k,
    input  wire [BB_W-1:0]       batch,
    input  wire [31:0]           key_idx,   // PRNG key registers of the index and value streams
    input  wire [31:0]           key_val,
    input  wire [A_W-1:0]        e_base,    // the error tensor's address: e[b, j] at e_base + b*C + j
    input  wire [A_W-1:0]        fb_base,   // the stored table's address (REGEN = 0)
    output wire                  busy,
    output reg  [LANES*A_W-1:0]  e_addr,
    input  wire [LANES*E_W-1:0]  e_data,
    output reg  [LANES*A_W-1:0]  fb_addr,
    input  wire [LANES*FB_W-1:0] fb_data,
    output reg                   out_valid,
    output reg  [LANES-1:0]      out_lane,  // lanes holding a target unit
    output reg  [BB_W-1:0]       out_b,
    output reg  [N_W-1:0]        out_i0,    // lane l holds unit out_i0 + l
    output reg  [LANES*W_W-1:0]  out_wide
);
    localparam integer S_IDLE = 2'd0, S_FETCH = 2'd1, S_ACC = 2'd2;

    reg [1:0] state;
    reg [N_W-1:0] n_r, i0;          // targets, first unit of the group
    reg [C_W-1:0] c_r;
    reg [3:0] k_r, m;               // taps, current tap
    reg [BB_W-1:0] b_r, b;          // batch, current sample
    reg [3:0] r;                    // fetch cycle: requests 0..k issue, arrivals 3..k+3
    reg [A_W-1:0] e_base_r;
    reg [31:0] key_idx_r, key_val_r;
    reg [A_W-1:0] bbase;            // e_base + b * C
    wire last_tap = (m == k_r - 4'd1);
    wire last_b = (b == b_r - 1'b1);
    wire last_group = (i0 + LANES >= n_r);

    assign busy = state != S_IDLE;
    always @(posedge clk) begin
        if (rst) begin
            state <= S_IDLE;
        end else case (state)
            S_IDLE: if (start) begin
                n_r <= n_target; c_r <= n_src; k_r <= k; b_r <= batch;
                e_base_r <= e_base; key_idx_r <= key_idx; key_val_r <= key_val;
                i0 <= {N_W{1'b0}}; r <= 4'd0; state <= S_FETCH;
            end
            S_FETCH: begin
                r <= r + 4'd1;
                if (r == k_r + 4'd3) begin
                    state <= S_ACC; b <= {BB_W{1'b0}}; m <= 4'd0; bbase <= e_base_r;
                end
            end
            S_ACC: begin
                m <= last_tap ? 4'd0 : m + 4'd1;
                if (last_tap) begin
                    b <= b + 1'b1;
                    bbase <= bbase + c_r;
                end
                if (last_tap && last_b) begin
                    i0 <= i0 + LANES; r <= 4'd0;
                    state <= last_group ? S_IDLE : S_FETCH;
                end
            end
            default: state <= S_IDLE;
        endcase
    end

    // the tap stage A registers (shared by the lanes): sample, first / last tap
    reg tap_valid, tap_first, tap_last;
    reg [BB_W-1:0] tap_b;
    reg [N_W-1:0] tap_i0;
    always @(posedge clk) begin
        tap_valid <= !rst && state == S_ACC;
        tap_first <= (m == 4'd0);
        tap_last <= last_tap;
        tap_b <= b;
        tap_i0 <= i0;
        out_valid <= !rst && tap_valid && tap_last;
        if (tap_valid && tap_last) begin
            out_b <= tap_b;
            out_i0 <= tap_i0;
        end
    end

    genvar l;
    generate
        for (l = 0; l < LANES; l = l + 1) begin : lane
            wire [N_W-1:0] unit = i0 + l;
            wire active = unit < n_r;
            // fetch: request r (0: index, 1..k: value m = r - 1), its answer 3 cycles later
            reg [N_W+3:0] vidx;      // unit * k + m of the request
            always @(posedge clk)
                if (state == S_IDLE) vidx <= l * k;
                else if (state == S_FETCH && r != 4'd0 && r <= k_r) vidx <= vidx + 1'b1;
                else if (state == S_ACC && last_tap && last_b) vidx <= vidx + (LANES - 1) * k_r;
            wire [31:0] word;
            wire [FB_W-1:0] table_word;
            if (REGEN) begin : regen
                wire [31:0] x = (r == 4'd0) ? key_idx_r ^ unit : key_val_r ^ vidx;
                mix32 hash (.clk(clk), .x(x), .y(word));
                assign table_word = {FB_W{1'b0}};
                always @(posedge clk) fb_addr[l*A_W +: A_W] <= {A_W{1'b0}};
            end else begin : stored
                reg [A_W-1:0] tbase;  // the unit's first table word: fb_base + unit * (k + 1)
                always @(posedge clk) begin
                    if (state == S_IDLE) tbase <= fb_base + l * (k + 4'd1);
                    else if (state == S_ACC && last_tap && last_b) tbase <= tbase + LANES * (k_r + 4'd1);
                    fb_addr[l*A_W +: A_W] <= tbase + r;
                end
                pipe_delay #(.W(FB_W), .N(2)) align (.clk(clk), .rst(rst), .d(fb_data[l*FB_W +: FB_W]), .q(table_word));
                assign word = 32'd0;
            end
            // j0 = (word * C) >> 32, and the value codes (§10.1)
            wire [31+C_W:0] scaled = word * c_r;
            wire [C_W-1:0] j0_new = REGEN ? scaled[31+C_W:32] : table_word[C_W-1:0];
            reg [VV-1:0] v_new;
            always @* begin
                if (!REGEN) v_new = table_word[VV-1:0];
                else if (VALUES == 0) v_new = word[31] ? 2'sd1 : -2'sd1;
                else if (VALUES == 1) v_new = (word[31:30] == 2'd3) ? 2'sd1 : (word[31:30] == 2'd0) ? -2'sd1 : 2'sd0;
                else v_new = {~word[31], word[30:32-VB]};  // (w >> (32 - VB)) - 2^(VB-1)
            end
            reg [C_W-1:0] j0, j;
            reg [VV-1:0] vals [0:K_MAX-1];
            always @(posedge clk) begin
                if (state == S_FETCH && r == 4'd3) j0 <= j0_new;
                if (state == S_FETCH && r >= 4'd4) vals[r - 4'd4] <= v_new;
            end
            // stage A: the error address and the tap's value
            wire [C_W-1:0] j_cur = (m == 4'd0) ? j0 : j;
            reg [VV-1:0] tap_v;
            reg tap_active;
            always @(posedge clk) begin
                j <= (j_cur + 1'b1 == c_r) ? {C_W{1'b0}} : j_cur + 1'b1;
                e_addr[l*A_W +: A_W] <= bbase + j_cur;
                tap_v <= vals[m];
                tap_active <= active;
            end
            // stage B: the term and the accumulator
            wire signed [E_W-1:0] e = e_data[l*E_W +: E_W];
            wire signed [VV-1:0] v = tap_v;
            wire signed [W_W-1:0] term = (VALUES == 2) ? e * v : (v == 0) ? 0 : v[VV-1] ? -e : e;
            reg signed [W_W-1:0] acc;
            wire signed [W_W-1:0] sum = (tap_first ? 0 : acc) + term;
            always @(posedge clk) begin
                if (tap_valid) acc <= sum;
                if (tap_valid && tap_last) begin
                    out_wide[l*W_W +: W_W] <= sum;
                    out_lane[l] <= tap_active;
                end
            end
        end
    endgenerate
endmodule
