; gemv4x4.asm: y = W x for a 16 x 16 matrix on a 4 x 4 mesh.
;
; Distribution: PE (px, py) holds the 4 x 4 block W[4py:4py+4, 4px:4px+4] row-major at
; addresses 0..15 and the block x[4px:4px+4] of the input at 16..19 (the columns of x are
; distributed over the mesh columns). Each PE computes its partial y block with 4 rdot
; instructions into 20..23; the partials are then chain-reduced westwards along each row
; (as in row_reduce.asm), so PE (0, py) ends with y[4py:4py+4] at 20..23.
; The .data below is a demo (the same blocks in every PE of a region); tests load random
; per-PE blocks into SRAM and check y against numpy.
;
; Expected cycles (docs/timing.md; bundled presets o = r = h = 1, fp32 SIMD width 1):
;   compute: 4 rdots of k = 4 elements, each o + ceil(k / w) = 5 cycles: 20 cycles.
;   reduction: the east column sends at 20; each hop adds o + 2r + h + m = 8 cycles
;   (m = 4 values); the rows run in parallel on disjoint links.
;   cycles = 4 * (o + 4) + 3 * (o + 2r + h + 4) = 20 + 24 = 44
.mesh 4x4
.dtype fp32
.sram 24
.params 2

; x sends partial sums on c(x mod 2) to the west and receives c((x+1) mod 2) from the east.
.route c1 rx=R tx=W at 3,0 3,3
.route c0 rx=R tx=W at 2,0 2,3
.route c1 rx=E tx=R at 2,0 2,3
.route c1 rx=R tx=W at 1,0 1,3
.route c0 rx=E tx=R at 1,0 1,3
.route c1 rx=E tx=R at 0,0 0,3

.region east 3,0 3,3
.data 0 1 0 0 0 0 1 0 0 0 0 1 0 0 0 0 1
.data 16 4 3 2 1
    rdot [20], [0], [16], 4
    rdot [21], [4], [16], 4
    rdot [22], [8], [16], 4
    rdot [23], [12], [16], 4
    send c1, [20], 4
    halt

.region middle 1,0 2,3
.param p0 = x % 2                  ; the color this PE sends on
.param p1 = (x + 1) % 2            ; the color it receives on
.data 0 1 1 1 1 2 2 2 2 0.5 0.5 0.5 0.5 -1 -1 -1 -1
.data 16 1 2 3 4
    rdot [20], [0], [16], 4
    rdot [21], [4], [16], 4
    rdot [22], [8], [16], 4
    rdot [23], [12], [16], 4
    recvadd %p1, [20], 4
    send %p0, [20], 4
    halt

.region west 0,0 0,3
.data 0 0.25 0 0 0 0 0.25 0 0 0 0 0.25 0 0 0 0 0.25
.data 16 8 8 8 8
    rdot [20], [0], [16], 4
    rdot [21], [4], [16], 4
    rdot [22], [8], [16], 4
    rdot [23], [12], [16], 4
    recvadd c1, [20], 4
    halt
