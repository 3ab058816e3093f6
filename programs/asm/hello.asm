; hello.asm: one message over one hop.
;
; PE (0,0) sends the 4 values at its address 0 on color c0 to its east neighbour (1,0),
; which receives them at address 0. Both halt.
;
; Expected cycles (docs/timing.md, point to point; o = issue_overhead, r = ramp_latency,
; h = hop_latency; the bundled presets have o = r = h = 1, fp32 SIMD width 1):
;   the send issues at t = 0; the last wavelet reaches (1,0) at
;       last = t + o + 2r + d*h + n - 1 = 0 + 1 + 2 + 1 + 4 - 1 = 7
;   the receiver's recv (posted at 0) ends at max(0 + o + n, last + 1) = 8 and it halts.
;   The sender is busy o + n = 5 cycles and halts at 5.
;   cycles = n + d + 3 = 4 + 1 + 3 = 8
.mesh 2x1
.dtype fp32
.sram 8

.region sender 0,0 0,0
.route c0 rx=R tx=E            ; from this PE's core out to the east
.data 0 1.0 2.0 3.0 4.0
    send c0, [0], 4
    halt

.region receiver 1,0 1,0
.route c0 rx=W tx=R            ; from the west link into this PE's core
    recv c0, [0], 4
    halt
