"""Numba kernels for the fast-forward's cuts (emulator/mesh/fast_forward.py): each reads or
writes the PE rows or the links of a whole wafer in one pass, where numpy would take one
pass per field over strided columns."""

from emulator.jit import njit
from emulator.mesh import kernels as K


@njit(nrt=False)
def pe_fields(pes, live, clock, busy, slack, reg_cols, regs):
    """Copy the clock (cycles), busy cycles, P_SLACK and registers `reg_cols` (indices)
    of the PEs `live` (indices) into the outputs, one entry per live PE; returns how
    many of them are not parked."""
    unparked = 0
    for j in range(live.shape[0]):
        pe = live[j]
        clock[j] = pes[pe, K.P_CLOCK]
        busy[j] = pes[pe, K.P_BUSY]
        slack[j] = pes[pe, K.P_SLACK]
        for r in range(reg_cols.shape[0]):
            regs[j, r] = pes[pe, K.P_REGS + reg_cols[r]]
        if pes[pe, K.P_STATUS] != K.PARKED:
            unparked += 1
    return unparked


@njit(nrt=False)
def decode_links(links, out, used, slack, in_place):
    """Decode the links' first-reservation tracking (mesh.kernels LINK_*): free cycles
    and busy wavelet-cycles as if untracked into `out` (and into `links` itself when
    `in_place`); per link, whether it was reserved (`used`) and the slack of its first
    reservation (-1: it waited)."""
    busy_bits = (1 << K.LINK_SLACK_SHIFT) - 1
    for link in range(used.shape[0]):
        free, word = links[2 * link], links[2 * link + 1]
        if free < 0:
            free = -1 - free
        used[link] = (word & K.LINK_USED) != 0
        slack[link] = ((word >> K.LINK_SLACK_SHIFT) & K.LINK_SLACK_MAX) - 1
        word &= busy_bits
        out[2 * link], out[2 * link + 1] = free, word
        if in_place:
            links[2 * link], links[2 * link + 1] = free, word


@njit(nrt=False)
def advance_pes(pes, live, cycles, pc_steps, busy_steps):
    """Move the PEs `live` on by `cycles` clock cycles, their pcs by `pc_steps` and
    their busy cycles by `busy_steps` (one entry per live PE)."""
    for j in range(live.shape[0]):
        pe = live[j]
        pes[pe, K.P_CLOCK] += cycles
        pes[pe, K.P_PC] += pc_steps[j]
        pes[pe, K.P_BUSY] += busy_steps[j]


@njit(nrt=False)
def take_head(pes, live, head, shift):
    """Set the PEs `live` to a head run's final fields (`head` [live, fields up to
    P_SLACK], its cycles `shift` early): clock and finish + shift, pc, status and wait
    color, busy cycles added."""
    for j in range(live.shape[0]):
        pe = live[j]
        pes[pe, K.P_CLOCK] = head[j, K.P_CLOCK] + shift
        pes[pe, K.P_FINISH] = head[j, K.P_FINISH] + shift
        pes[pe, K.P_PC] = head[j, K.P_PC]
        pes[pe, K.P_STATUS] = head[j, K.P_STATUS]
        pes[pe, K.P_WAIT] = head[j, K.P_WAIT]
        pes[pe, K.P_BUSY] += head[j, K.P_BUSY]


@njit(nrt=False)
def head_fields(pes, live, out):
    """Copy the PE row fields up to P_SLACK of the PEs `live` into `out` [live, fields]
    (a head run's result)."""
    for j in range(live.shape[0]):
        pe = live[j]
        for f in range(out.shape[1]):
            out[j, f] = pes[pe, f]


@njit(nrt=False)
def head_start(pes, live, pc_steps):
    """Ready the PEs `live` for a head run from a cut: pcs moved on by `pc_steps`, busy
    cycles cleared, first acts tracked from here (P_SLACK)."""
    for j in range(live.shape[0]):
        pe = live[j]
        pes[pe, K.P_PC] += pc_steps[j]
        pes[pe, K.P_BUSY] = 0
        pes[pe, K.P_SLACK] = K.SLACK_AT_CUT


@njit(nrt=False)
def track_links(links, clear_busy):
    """Track the links' first reservations from here (mesh.kernels LINK_*: a free cycle f
    becomes -1 - f; a link still untracked since an earlier cut keeps its encoded free
    cycle); with `clear_busy`, also zero their busy wavelet-cycles."""
    for at in range(0, links.shape[0], 2):
        if links[at] >= 0:
            links[at] = -1 - links[at]
        if clear_busy:
            links[at + 1] = 0


@njit(nrt=False)
def merge_links(links, head_links, seen_free, true_free, shift):
    """Add a tracked run's links (`head_links`, encoded as the kernel leaves them, its
    cycles `shift` early) to `links` if every link it reserved would start its first
    reservation at the same cycle from its free cycle `true_free` as from `seen_free`,
    the one the run found (fast_forward.starts_alike): a reserved link takes the run's
    free cycle + shift, every link adds its busy wavelet-cycles. Returns False, with
    `links` partly merged, at the first link that fails."""
    busy_bits = (1 << K.LINK_SLACK_SHIFT) - 1
    for link in range(seen_free.shape[0]):
        word = head_links[2 * link + 1]
        if word & K.LINK_USED:
            slack = ((word >> K.LINK_SLACK_SHIFT) & K.LINK_SLACK_MAX) - 1
            seen, other = seen_free[link], true_free[link]
            if other != seen and slack < max(other - seen, 0):
                return False
            links[2 * link] = head_links[2 * link] + shift
        links[2 * link + 1] += word & busy_bits
    return True


@njit(nrt=False)
def add_block_links(links, start_links, end_links, used, shift):
    """Add a block's links (decoded at its first cut, `start_links`, and its last,
    `end_links`; `used`: reserved in the block) `shift` cycles later to `links`: a used
    link takes the block's final free cycle + shift; every link adds the block's busy
    wavelet-cycles."""
    for link in range(used.shape[0]):
        if used[link]:
            links[2 * link] = end_links[2 * link] + shift
        links[2 * link + 1] += end_links[2 * link + 1] - start_links[2 * link + 1]


@njit(nrt=False)
def parked_keys(pes, shift, keys):
    """Make every parked PE ready: its heap key (clock << shift | PE) into `keys`, in PE
    order; returns how many."""
    count = 0
    for pe in range(pes.shape[0]):
        if pes[pe, K.P_STATUS] == K.PARKED:
            pes[pe, K.P_STATUS] = K.READY
            keys[count] = (pes[pe, K.P_CLOCK] << shift) | pe
            count += 1
    return count
