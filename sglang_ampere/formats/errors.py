from __future__ import annotations


class FormatError(ValueError):
    """A tensor does not hold what its format requires. The message names the tensor."""

    def __init__(self, name: str | None, problem: str):
        self.tensor = name
        self.problem = problem
        super().__init__(f"{name}: {problem}" if name else problem)

    def __reduce__(self):  # survive the trip back from a worker process
        return (type(self), (self.tensor, self.problem))


def check_dtype(t, allowed, name: str | None, what: str) -> None:
    """Raise FormatError unless ``t.dtype`` is one of ``allowed``."""
    allowed = tuple(allowed) if isinstance(allowed, (tuple, list, set)) else (allowed,)
    if t.dtype not in allowed:
        want = " or ".join(str(a).replace("torch.", "") for a in allowed)
        raise FormatError(name, f"{what} must be {want}, got {str(t.dtype).replace('torch.', '')}")
