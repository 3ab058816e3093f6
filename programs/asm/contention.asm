; contention.asm: two flows sharing one link.
;
; Flow A: PE (0,0) sends 8 wavelets on c0 to (2,0) (2 hops, through (1,0)).
; Flow B: PE (1,0) sends 8 wavelets on c1 to (2,0) (1 hop).
; Both use the link (1,0) -> (2,0). Colors are virtual channels on the same physical
; link, so the two messages serialise there.
;
; Expected cycles (docs/timing.md, Messages; bundled presets o = r = h = 1):
;   both sends issue at cycle 0; messages are routed in send order, ties broken by PE
;   index, so A is routed first.
;   A: leaves (0,0)'s router at 0 + o + r = 2; link (0,0)->(1,0) busy [2, 10); head at
;      (1,0) at 3; link (1,0)->(2,0) busy [3, 11); head at (2,0) at 4;
;      last wavelet at 4 + r + n - 1 = 12.
;   B: leaves (1,0)'s router at 2, but the link is free only at 11: busy [11, 19);
;      head at (2,0) at 12; last wavelet at 12 + r + n - 1 = 20
;      (uncontended it would be 11: the shared link delays B by 9 cycles).
;   (2,0): recv c0 ends at max(0 + o + n, 12 + 1) = 13; recv c1 issues at 13 and ends at
;      max(13 + o + n, 20 + 1) = 22; then it halts.
;   cycles = 22
.mesh 3x1
.dtype fp32
.sram 16

.region a 0,0 0,0
.route c0 rx=R tx=E
.data 0 1 1 1 1 1 1 1 1
    send c0, [0], 8
    halt

.region b 1,0 1,0
.route c0 rx=W tx=E            ; forwards flow A
.route c1 rx=R tx=E
.data 0 2 2 2 2 2 2 2 2
    send c1, [0], 8
    halt

.region sink 2,0 2,0
.route c0 rx=W tx=R
.route c1 rx=W tx=R
    recv c0, [0], 8
    recv c1, [8], 8
    halt
