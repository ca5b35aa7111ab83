"""The synthetic program task: write a program computing a*x + b, a toy stand-in for
program synthesis with unit tests, scored with the "basic" CodeRL reward table that B-Coder
uses (Le et al. 2022, "CodeRL", arXiv 2207.01780; Yu et al. 2024, "B-Coder", arXiv 2310.03173).

A problem (a, b) in [0, 9]^2 is shown as `A 3 B 7 :`; a program is an expression over `x`,
non-negative integer literals, `+ - * /` and parentheses, at most MAX_TOKENS tokens (one
token per character, spaces ignored), e.g. `3*x+7` or `7+x*3`. It is run on x in XS by a
recursive-descent parser/evaluator (no eval()):

    expr   := term (("+" | "-") term)*
    term   := factor (("*" | "/") factor)*
    factor := "x" | digits | "(" expr ")"

Integer semantics: `/` is floor division (Python's //); dividing by zero is the runtime
error. There is no unary minus (`-x` does not parse).

Reward table (the spec's): parse failure -1, division by zero -0.6, any wrong output -0.3,
all correct +1.
"""
from __future__ import annotations

from dataclasses import dataclass

MAX_TOKENS = 12
XS = (0, 1, 2, 3, 5)
REWARDS = {"compile_error": -1.0, "runtime_error": -0.6, "failed": -0.3, "passed": 1.0}
GT_FORMS = ("{a}*x+{b}", "x*{a}+{b}", "{b}+{a}*x", "{b}+x*{a}")
TOKENS = set("x0123456789+-*/()")


class ParseError(ValueError):
    pass


class DivisionByZero(ArithmeticError):
    pass


@dataclass(frozen=True)
class Node:
    op: str  # "x", "num", or one of + - * /
    value: int = 0
    left: "Node | None" = None
    right: "Node | None" = None


def tokenize(text: str) -> list[str]:
    """One token per non-space character; numbers are runs of digits (parsed later)."""
    toks = [c for c in text if not c.isspace()]
    if not toks:
        raise ParseError("empty program")
    if len(toks) > MAX_TOKENS:
        raise ParseError(f"{len(toks)} tokens > {MAX_TOKENS}")
    bad = sorted(set(toks) - TOKENS)
    if bad:
        raise ParseError(f"unknown tokens {bad}")
    return toks


class _Parser:
    def __init__(self, toks: list[str]):
        self.toks, self.i = toks, 0

    def peek(self) -> str | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> str:
        tok = self.peek()
        if tok is None:
            raise ParseError("unexpected end")
        self.i += 1
        return tok

    def expr(self) -> Node:
        node = self.term()
        while self.peek() in ("+", "-"):
            op = self.take()
            node = Node(op, left=node, right=self.term())
        return node

    def term(self) -> Node:
        node = self.factor()
        while self.peek() in ("*", "/"):
            op = self.take()
            node = Node(op, left=node, right=self.factor())
        return node

    def factor(self) -> Node:
        tok = self.take()
        if tok == "x":
            return Node("x")
        if tok.isdigit():
            digits = tok
            while (nxt := self.peek()) is not None and nxt.isdigit():
                digits += self.take()
            return Node("num", value=int(digits))
        if tok == "(":
            node = self.expr()
            if self.take() != ")":
                raise ParseError("expected ')'")
            return node
        raise ParseError(f"unexpected {tok!r}")


def parse(text: str) -> Node:
    """The program's syntax tree; ParseError if it is not a valid program."""
    p = _Parser(tokenize(text))
    node = p.expr()
    if p.peek() is not None:
        raise ParseError(f"trailing {p.peek()!r}")
    return node


def evaluate(node: Node, x: int) -> int:
    if node.op == "x":
        return x
    if node.op == "num":
        return node.value
    a, b = evaluate(node.left, x), evaluate(node.right, x)
    if node.op == "+":
        return a + b
    if node.op == "-":
        return a - b
    if node.op == "*":
        return a * b
    if b == 0:
        raise DivisionByZero("division by zero")
    return a // b


def program_text(completion: str) -> str:
    """The program in a completion: its first line (a model may go on after EOS-less text)."""
    return completion.strip().split("\n", 1)[0]


def run(completion: str, a: int, b: int) -> tuple[str, str | None]:
    """(status, detail): compile_error | runtime_error | failed | passed, as in the sandbox."""
    try:
        tree = parse(program_text(completion))
    except ParseError as e:
        return "compile_error", str(e)
    wrong = None
    for x in XS:
        try:
            got = evaluate(tree, x)
        except DivisionByZero:
            return "runtime_error", f"division by zero at x={x}"
        if got != a * x + b and wrong is None:
            wrong = f"x={x}: got {got}, expected {a * x + b}"
    return ("failed", wrong) if wrong else ("passed", None)


def prompt(a: int, b: int) -> str:
    return f"A {a} B {b} :"


def solutions(a: int, b: int) -> list[str]:
    """The ground-truth programs (the canonical forms), as responses (a leading space)."""
    return [" " + form.format(a=a, b=b) for form in GT_FORMS]
