// Mode codes of the run-time `rnd_mode` / `ovf_mode` ports and the RND / OVF parameters.
// The order is edgedfa.fixed.Rounding / Overflow's (docs/datapath.md §2, §3);
// hdl_models/rtl/__init__.py reads this file, so Python and Verilog share one table.
localparam integer RND_AP_TRN         = 0;
localparam integer RND_AP_TRN_ZERO    = 1;
localparam integer RND_AP_RND         = 2;
localparam integer RND_AP_RND_ZERO    = 3;
localparam integer RND_AP_RND_MIN_INF = 4;
localparam integer RND_AP_RND_INF     = 5;
localparam integer RND_AP_RND_CONV    = 6;
localparam integer RND_STOCHASTIC     = 7;
localparam integer OVF_AP_SAT         = 0;
localparam integer OVF_AP_SAT_ZERO    = 1;
localparam integer OVF_AP_SAT_SYM     = 2;
localparam integer OVF_AP_WRAP        = 3;
// A mode parameter set to MODE_PORT takes the mode from the run-time port instead.
localparam integer MODE_PORT          = -1;
