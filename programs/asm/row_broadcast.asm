; row_broadcast.asm: multicast along a row of 8 PEs.
;
; PE (0,0) sends 16 values on color c0. Every router on the row forwards the message east
; and (from x = 1 on) also delivers a copy to its own core, so PEs (1,0)..(7,0) all
; receive the same 16 values with one send: multicast costs no extra link time.
;
; Expected cycles (docs/timing.md; bundled presets o = r = h = 1):
;   the receiver at distance d gets its last wavelet at t + o + 2r + d*h + n - 1 = n + d + 2
;   and its recv ends one cycle later, at n + d + 3. The farthest receiver has d = 7:
;   cycles = n + 7 + 3 = 16 + 10 = 26
;   (the sender halts at o + n = 17; the receiver at x finishes at 19 + x).
.mesh 8x1
.dtype fp32
.sram 16

.region source 0,0 0,0
.route c0 rx=R tx=E
.data 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16
    send c0, [0], 16
    halt

.region receivers 1,0 7,0
.route c0 rx=W tx=E|R           ; forward and deliver ...
.route c0 rx=W tx=R at 7,0 7,0  ; ... except at the end of the row: deliver only
    recv c0, [0], 16
    halt
