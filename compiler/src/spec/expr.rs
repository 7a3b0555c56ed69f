//! Dimension expressions: `heads*head_dim`, `(hidden + 2) / 2`.
//!
//! Integers, dimension symbols, `+ - * /` with the usual precedence (left-associative) and
//! parentheses. Values are `u64`; `/` must divide exactly, `-` must not go below zero, and
//! nothing may overflow. Every error carries the byte range in the expression it is about.

use std::ops::Range;

/// A parsed expression; each node keeps its byte range in the source string.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// An integer literal.
    Num(u64),
    /// A dimension symbol.
    Sym(String, Range<usize>),
    /// `lhs op rhs`, `op` one of `+ - * /`.
    Bin(Box<Expr>, char, Box<Expr>, Range<usize>),
}

/// What went wrong in an expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExprErrorKind {
    /// Not a well-formed expression.
    Syntax,
    /// A symbol with no value.
    Unbound,
    /// Inexact division, division by zero, a negative result or an overflow.
    Arithmetic,
}

/// An error with its byte range in the expression.
#[derive(Debug, Clone, PartialEq)]
pub struct ExprError {
    /// The kind of error.
    pub kind: ExprErrorKind,
    /// What was found and what was expected.
    pub message: String,
    /// Bytes of the expression string it is about.
    pub at: Range<usize>,
}

fn err(kind: ExprErrorKind, message: impl Into<String>, at: Range<usize>) -> ExprError {
    ExprError {
        kind,
        message: message.into(),
        at,
    }
}

/// Parses an expression.
pub fn parse(src: &str) -> Result<Expr, ExprError> {
    let mut p = Parser { src, pos: 0 };
    let e = p.sum()?;
    p.skip_ws();
    if p.pos < src.len() {
        let end = p.pos + src[p.pos..].chars().next().map_or(1, char::len_utf8);
        return Err(err(
            ExprErrorKind::Syntax,
            format!(
                "unexpected `{}`; expected an operator (+ - * /) or the end",
                &src[p.pos..end]
            ),
            p.pos..end,
        ));
    }
    Ok(e)
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self.src[self.pos..].starts_with(' ') {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<char> {
        self.skip_ws();
        self.src[self.pos..].chars().next()
    }

    fn sum(&mut self) -> Result<Expr, ExprError> {
        let start = self.pos;
        let mut lhs = self.product()?;
        while let Some(op @ ('+' | '-')) = self.peek() {
            self.pos += 1;
            let rhs = self.product()?;
            lhs = Expr::Bin(Box::new(lhs), op, Box::new(rhs), start..self.pos);
        }
        Ok(lhs)
    }

    fn product(&mut self) -> Result<Expr, ExprError> {
        self.skip_ws();
        let start = self.pos;
        let mut lhs = self.atom()?;
        while let Some(op @ ('*' | '/')) = self.peek() {
            self.pos += 1;
            let rhs = self.atom()?;
            lhs = Expr::Bin(Box::new(lhs), op, Box::new(rhs), start..self.pos);
        }
        Ok(lhs)
    }

    fn atom(&mut self) -> Result<Expr, ExprError> {
        let start = self.pos;
        match self.peek() {
            Some('(') => {
                self.pos += 1;
                let e = self.sum()?;
                if self.peek() != Some(')') {
                    let len = self.src[self.pos..]
                        .chars()
                        .next()
                        .map_or(0, char::len_utf8);
                    let at = self.pos..self.pos + len;
                    return Err(err(ExprErrorKind::Syntax, "expected `)`", at));
                }
                self.pos += 1;
                Ok(e)
            }
            Some(c) if c.is_ascii_digit() => {
                let s = self.pos;
                while self.src[self.pos..].starts_with(|c: char| c.is_ascii_digit() || c == '_') {
                    self.pos += 1;
                }
                let digits: String = self.src[s..self.pos]
                    .chars()
                    .filter(|&c| c != '_')
                    .collect();
                digits.parse().map(Expr::Num).map_err(|_| {
                    err(
                        ExprErrorKind::Syntax,
                        "integer literal too large",
                        s..self.pos,
                    )
                })
            }
            Some(c) if c.is_ascii_alphabetic() || c == '_' => {
                let s = self.pos;
                while self.src[self.pos..]
                    .starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
                {
                    self.pos += 1;
                }
                Ok(Expr::Sym(self.src[s..self.pos].to_owned(), s..self.pos))
            }
            Some(c) => Err(err(
                ExprErrorKind::Syntax,
                format!("unexpected `{c}`; expected a number, a dimension symbol or `(`"),
                self.pos..self.pos + c.len_utf8(),
            )),
            None => Err(err(
                ExprErrorKind::Syntax,
                "the expression ends early; expected a number, a dimension symbol or `(`",
                start..self.pos,
            )),
        }
    }
}

/// Evaluates an expression, looking symbols up with `lookup`.
pub fn eval(e: &Expr, lookup: &dyn Fn(&str) -> Option<u64>) -> Result<u64, ExprError> {
    match e {
        Expr::Num(n) => Ok(*n),
        Expr::Sym(name, at) => lookup(name).ok_or_else(|| {
            err(
                ExprErrorKind::Unbound,
                format!("unbound dimension symbol `{name}`"),
                at.clone(),
            )
        }),
        Expr::Bin(l, op, r, at) => {
            let (a, b) = (eval(l, lookup)?, eval(r, lookup)?);
            let arith = |m: String| err(ExprErrorKind::Arithmetic, m, at.clone());
            match op {
                '+' => a
                    .checked_add(b)
                    .ok_or_else(|| arith(format!("{a} + {b} overflows"))),
                '-' => a
                    .checked_sub(b)
                    .ok_or_else(|| arith(format!("{a} - {b} is negative"))),
                '*' => a
                    .checked_mul(b)
                    .ok_or_else(|| arith(format!("{a} * {b} overflows"))),
                _ => {
                    if b == 0 {
                        Err(arith(format!("{a} / 0 divides by zero")))
                    } else if a % b != 0 {
                        Err(arith(format!(
                            "{a} / {b} is not exact (remainder {}); `/` must divide exactly",
                            a % b
                        )))
                    } else {
                        Ok(a / b)
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(s: &str) -> Result<u64, ExprError> {
        let dims = |n: &str| match n {
            "heads" => Some(14),
            "head_dim" => Some(64),
            _ => None,
        };
        eval(&parse(s)?, &dims)
    }

    #[test]
    fn precedence_parentheses_and_errors() {
        assert_eq!(run("heads*head_dim").unwrap(), 896);
        assert_eq!(run("2 + 3 * 4").unwrap(), 14);
        assert_eq!(run("(2 + 3) * 4").unwrap(), 20);
        assert_eq!(run("10 - 4 - 3").unwrap(), 3);
        assert_eq!(run("64 / 4 / 2").unwrap(), 8);
        let e = run("heads * hidden").unwrap_err();
        assert_eq!((e.kind, e.at), (ExprErrorKind::Unbound, 8..14));
        assert_eq!(
            run("heads / 4").unwrap_err().kind,
            ExprErrorKind::Arithmetic
        );
        assert_eq!(run("1 - 2").unwrap_err().kind, ExprErrorKind::Arithmetic);
        assert_eq!(run("2 *").unwrap_err().kind, ExprErrorKind::Syntax);
        assert_eq!(run("(2").unwrap_err().kind, ExprErrorKind::Syntax);
        assert_eq!(run("2 2").unwrap_err().kind, ExprErrorKind::Syntax);
        assert_eq!(run("").unwrap_err().kind, ExprErrorKind::Syntax);
        assert_eq!(
            run("99999999999 * 99999999999").unwrap_err().kind,
            ExprErrorKind::Arithmetic
        );
    }
}
