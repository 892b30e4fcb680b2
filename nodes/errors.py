"""One shape for every user-facing error: which node, which input, what value, what to do."""


class NodeInputError(ValueError):
    def __init__(self, node: str, input_name: str, value, advice: str):
        self.node, self.input_name, self.value = node, input_name, value
        shown = value if isinstance(value, (int, float, str)) else type(value).__name__
        super().__init__(f"{node}: input '{input_name}' = {shown!r}: {advice}")
