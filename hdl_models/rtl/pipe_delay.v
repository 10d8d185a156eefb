`timescale 1ns / 1ps
// A W-bit value delayed by N register stages (N = 0: a wire). Skews and pipeline alignment.
// RESET = 1 clears the stages on `rst` (valid bits); data stages need no reset.
module pipe_delay #(
    parameter integer W = 1,
    parameter integer N = 1,
    parameter integer RESET = 0
) (
    input  wire         clk,
    input  wire         rst,
    input  wire [W-1:0] d,
    output wire [W-1:0] q
);
    generate
        if (N == 0) begin : wire_through
            assign q = d;
        end else begin : stages
            reg [W-1:0] r [0:N-1];
            integer i;
            always @(posedge clk) begin
                r[0] <= (RESET && rst) ? {W{1'b0}} : d;
                for (i = 1; i < N; i = i + 1) r[i] <= (RESET && rst) ? {W{1'b0}} : r[i-1];
            end
            assign q = r[N-1];
        end
    endgenerate
endmodule
