"""Row layouts of the 2048 ecosystem's datasets (DESIGN §2), as numpy structured dtypes.

Readers never rely on these for reading (they take the dtype from each file and pick fields
by name); writers use them to produce files exactly as the ecosystem does, and tests use them
to hand-build files. Itemsizes differ by writer: 46 / 42 / 48 bytes for the same logical row.
"""

from __future__ import annotations

import numpy as np

# packed expectimax dataset, with board_eval: 46 bytes, packed (no alignment padding)
PACKED_46 = np.dtype(
    [
        ("run_id", "<u4"),
        ("step_index", "<u4"),
        ("board", "<u8"),
        ("board_eval", "<i4"),
        ("tile_65536_mask", "<u2"),
        ("move_dir", "u1"),
        ("valuation_type", "u1"),
        ("ev_legal", "u1"),
        ("max_rank", "u1"),
        ("seed", "<u4"),
        ("branch_evs", "<f4", (4,)),
    ]
)
# the same without board_eval: 42 bytes
PACKED_42 = np.dtype([f for f in PACKED_46.descr if f[0] != "board_eval"])
# a C-aligned writer of the 46-byte record pads it to 48 bytes
PACKED_48_ALIGNED = np.dtype(PACKED_46.descr, align=True)

SELFPLAY = np.dtype(
    [
        ("run_id", "<u8"),
        ("step_idx", "<u4"),
        ("exps", "u1", (16,)),
        ("move_dir", "u1"),
        ("logp", "<f4", (4,)),
    ]
)

LEGACY = np.dtype(
    [
        ("board", "<u8"),
        ("move", "u1"),
        ("ev_legal", "u1"),
        ("ev_values", "<f4", (4,)),
        ("run_id", "<u4"),
        ("step_index", "<u2"),
    ]
)

VALUES = np.dtype(
    [
        ("run_id", "<u4"),
        ("step_index", "<u4"),
        ("reward", "<f4"),
        ("reward_scaled", "<f4"),
        ("return_raw", "<f4"),
        ("return_scaled", "<f4"),
    ]
)

LAYOUTS = {"packed": PACKED_46, "packed42": PACKED_42, "selfplay": SELFPLAY, "legacy": LEGACY}

STEP_FIELDS = ("step_index", "step_idx")
MOVE_FIELDS = ("move_dir", "move")

# directions, UDLR everywhere; ev_legal bit d set = direction d legal
UP, DOWN, LEFT, RIGHT = 0, 1, 2, 3
DIRECTIONS = ("up", "down", "left", "right")
