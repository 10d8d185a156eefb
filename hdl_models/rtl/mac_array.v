`timescale 1ns / 1ps
// Processing element (hdl_models/mac_array.py; docs/datapath.md §4): signed A_W x B_W
// multiply, ACC_W-bit accumulator with the overflow mode applied after every addition
// (OVF: an OVF_* code, or MODE_PORT for `ovf_mode`). `first` starts a reduction from
// `init_in` (the bias already in the accumulator's format), `last` copies the finished sum
// to `res` (res_valid for one cycle) while the next reduction may start on the next
// cycle. Operands and flags are forwarded registered (a and flags right, b and init
// down; the run-time overflow mode with the flags, so back-to-back GEMMs may differ): a
// systolic output-stationary PE. LATENCY 1.
module mac_pe #(
    parameter integer A_W = 8,
    parameter integer B_W = 8,
    parameter integer ACC_W = 24,
    parameter integer OVF = 0
) (
    input  wire             clk,
    input  wire             rst,
    input  wire [1:0]       ovf_in,
    input  wire [A_W-1:0]   a_in,
    input  wire [B_W-1:0]   b_in,
    input  wire [ACC_W-1:0] init_in,
    input  wire             valid_in,
    input  wire             first_in,
    input  wire             last_in,
    output reg  [1:0]       ovf_out,
    output reg  [A_W-1:0]   a_out,
    output reg  [B_W-1:0]   b_out,
    output reg  [ACC_W-1:0] init_out,
    output reg              valid_out,
    output reg              first_out,
    output reg              last_out,
    output reg  [ACC_W-1:0] res,
    output reg              res_valid
);
    localparam integer P_W = A_W + B_W;
    localparam integer S_W = (ACC_W > P_W ? ACC_W : P_W) + 1;
    reg [ACC_W-1:0] acc;
    wire signed [P_W-1:0] prod = $signed(a_in) * $signed(b_in);
    wire [ACC_W-1:0] init_q;  // the initial value in range (AP_SAT_SYM moves the most negative code)
    ovf_sat #(.IN_W(ACC_W), .OUT_W(ACC_W), .OUT_SIGNED(1), .MODE(OVF)) init_ovf (
        .v(init_in), .mode(ovf_in), .q(init_q), .hit());
    wire [ACC_W-1:0] base = first_in ? init_q : acc;
    wire signed [S_W-1:0] sum = $signed(base) + prod;
    wire [ACC_W-1:0] next;
    ovf_sat #(.IN_W(S_W), .OUT_W(ACC_W), .OUT_SIGNED(1), .MODE(OVF)) acc_ovf (
        .v(sum), .mode(ovf_in), .q(next), .hit());
    always @(posedge clk) begin
        a_out <= a_in;
        ovf_out <= ovf_in;
        b_out <= b_in;
        init_out <= init_in;
        valid_out <= valid_in & ~rst;
        first_out <= first_in;
        last_out <= last_in;
        if (valid_in) acc <= next;
        if (valid_in && last_in) res <= next;
        res_valid <= valid_in & last_in & ~rst;
    end
endmodule

// MAC array: ROWS x COLS PEs, output-stationary. Each cycle the array takes column k of the
// A tile (`a_col`, row r in bits r*A_W) and row k of the B tile (`b_row`); row r is delayed
// r cycles and column c c cycles on the way in (the skew), so PE (r, c) sees k at
// cycle k + r + c and every accumulator adds k in ascending order. `init_row` (one value per
// column) is read with `first`. Tiles follow each other without a gap: a GEMM of T tiles
// of K steps takes T*K + ROWS + COLS - 2 cycles from its first input to its last result.
module mac_array #(
    parameter integer ROWS = 2,
    parameter integer COLS = 2,
    parameter integer A_W = 8,
    parameter integer B_W = 8,
    parameter integer ACC_W = 24,
    parameter integer OVF = 0
) (
    input  wire                        clk,
    input  wire                        rst,
    input  wire [1:0]                  ovf_mode,
    input  wire                        in_valid,
    input  wire                        first,
    input  wire                        last,
    input  wire [ROWS*A_W-1:0]         a_col,
    input  wire [COLS*B_W-1:0]         b_row,
    input  wire [COLS*ACC_W-1:0]       init_row,
    output wire [ROWS*COLS*ACC_W-1:0]  res,        // PE (r, c) at (r*COLS + c)*ACC_W
    output wire [ROWS*COLS-1:0]        res_valid
);
    localparam integer F_W = A_W + 5;  // a, overflow mode, valid, first, last travel together
    localparam integer G_W = B_W + ACC_W;  // b and init travel together
    wire [F_W-1:0] west [0:ROWS-1][0:COLS];
    wire [G_W-1:0] north [0:ROWS][0:COLS-1];
    genvar r, c;
    generate
        for (r = 0; r < ROWS; r = r + 1) begin : row_skew
            wire valid_r;
            wire [F_W-1:0] data_r;
            pipe_delay #(.W(F_W), .N(r)) skew (.clk(clk), .rst(rst), .q(data_r),
                .d({a_col[r*A_W +: A_W], ovf_mode, 1'b0, first, last}));
            pipe_delay #(.W(1), .N(r), .RESET(1)) skew_valid (.clk(clk), .rst(rst), .d(in_valid), .q(valid_r));
            assign west[r][0] = {data_r[F_W-1:3], valid_r, data_r[1:0]};
        end
        for (c = 0; c < COLS; c = c + 1) begin : col_skew
            pipe_delay #(.W(G_W), .N(c)) skew (.clk(clk), .rst(rst), .q(north[0][c]),
                .d({b_row[c*B_W +: B_W], init_row[c*ACC_W +: ACC_W]}));
        end
        for (r = 0; r < ROWS; r = r + 1) begin : pe_row
            for (c = 0; c < COLS; c = c + 1) begin : pe_col
                wire [F_W-1:0] w = west[r][c];
                wire [G_W-1:0] n = north[r][c];
                wire [A_W-1:0] a_o;
                wire [B_W-1:0] b_o;
                wire [ACC_W-1:0] i_o;
                wire [1:0] m_o;
                wire v_o, f_o, l_o;
                mac_pe #(.A_W(A_W), .B_W(B_W), .ACC_W(ACC_W), .OVF(OVF)) pe (
                    .clk(clk), .rst(rst), .ovf_in(w[4:3]),
                    .a_in(w[F_W-1:5]), .b_in(n[G_W-1:ACC_W]), .init_in(n[ACC_W-1:0]),
                    .valid_in(w[2]), .first_in(w[1]), .last_in(w[0]),
                    .ovf_out(m_o), .a_out(a_o), .b_out(b_o), .init_out(i_o), .valid_out(v_o), .first_out(f_o),
                    .last_out(l_o), .res(res[(r*COLS + c)*ACC_W +: ACC_W]),
                    .res_valid(res_valid[r*COLS + c]));
                assign west[r][c+1] = {a_o, m_o, v_o, f_o, l_o};
                assign north[r+1][c] = {b_o, i_o};
            end
        end
    endgenerate
endmodule
