"""What every schema shares: the strict pydantic model and the seed field."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

SEED = Field(0, ge=0, le=2**32 - 1, description="numpy's and Lightning's seeds are unsigned 32-bit")


class Strict(BaseModel):
    # .inf and .nan are never a sensible setting (a min_lr of inf trains; a range to inf never ends)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
