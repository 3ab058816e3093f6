; row_reduce.asm: a chain reduction along a row of 8 PEs with recvadd.
;
; Every PE holds a vector of n = 8 values at address 0. PE (7,0) sends its vector west;
; each PE x = 6..1 adds the incoming vector into its own (recvadd) and sends the sum on;
; PE (0,0) ends up with the sum of all 8 vectors (here 8 * [1..8]).
; A router has one table entry per color, so a PE cannot both deliver and send on the
; same color: the PE at x sends on color c(x mod 2) and receives on c((x+1) mod 2).
;
; Expected cycles (docs/timing.md; bundled presets o = r = h = 1, fp32):
;   a send issued at t by x+1 completes the recvadd at x at t + o + 2r + h + n = t + 12,
;   and x sends right after its recvadd. The first send issues at 0, so PE (0,0)'s
;   recvadd ends at 7 * 12:
;   cycles = (W - 1) * (o + 2r + h + n) = 7 * 12 = 84
.mesh 8x1
.dtype fp32
.sram 8
.params 2

; Router entries: x sends on c(x mod 2) to the west, and receives c((x+1) mod 2) from the east.
.route c1 rx=R tx=W at 7,0 7,0
.route c0 rx=R tx=W at 6,0 6,0
.route c1 rx=R tx=W at 5,0 5,0
.route c0 rx=R tx=W at 4,0 4,0
.route c1 rx=R tx=W at 3,0 3,0
.route c0 rx=R tx=W at 2,0 2,0
.route c1 rx=R tx=W at 1,0 1,0
.route c1 rx=E tx=R at 6,0 6,0
.route c0 rx=E tx=R at 5,0 5,0
.route c1 rx=E tx=R at 4,0 4,0
.route c0 rx=E tx=R at 3,0 3,0
.route c1 rx=E tx=R at 2,0 2,0
.route c0 rx=E tx=R at 1,0 1,0
.route c1 rx=E tx=R at 0,0 0,0

.region east 7,0 7,0
.data 0 1 2 3 4 5 6 7 8
    send c1, [0], 8
    halt

.region middle 1,0 6,0
.param p0 = x % 2              ; the color this PE sends on
.param p1 = (x + 1) % 2        ; the color it receives on
.data 0 1 2 3 4 5 6 7 8
    recvadd %p1, [0], 8
    send %p0, [0], 8
    halt

.region west 0,0 0,0
.data 0 1 2 3 4 5 6 7 8
    recvadd c1, [0], 8
    halt
