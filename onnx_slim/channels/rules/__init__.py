"""Channel rules: op type -> how that op moves, ties, creates or consumes channels.

One small function per op family, registered in `RULES` by the modules of this
package. A node whose op has no rule freezes every tracked layout it reads (see
`unknown_op`): a channel group we do not understand is left alone, never guessed.
"""

from onnx_slim.channels.rules import (  # noqa: F401
    attention, contrib, elementwise, layout, normalization, recurrent, routing, spatial, weights,
)
from onnx_slim.channels.rules.registry import RULES, unknown_op

__all__ = ["RULES", "unknown_op"]
