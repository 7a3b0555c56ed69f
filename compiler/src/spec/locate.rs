//! Source positions for a deserialised spec.
//!
//! RON deserialisation drops spans, so a small lexer re-reads the source (skipping comments and
//! strings) and records every `Op(`, `Weight(`, `Repeat(`, `Loss(` and `Input(` in document
//! order. Serde visits sequences in document order, so the k-th deserialised item of a kind is
//! the k-th located one. Errors then narrow the span to a field (`args:`), a list element or a
//! string inside the item. When the counts disagree (a file written without variant names, say)
//! spans stay unknown and errors point at the item list instead; they never guess.

use super::syntax::{ArchFile, Item};
use std::ops::Range;

/// Where an item is: its byte range and the tokens of its parentheses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ItemSpan {
    /// Byte offset of the item's name (`Op` of `Op(`).
    pub start: usize,
    /// Byte offset just after its closing parenthesis.
    pub end: usize,
    /// Token index of `(`.
    open: usize,
    /// Token index of the matching `)`.
    close: usize,
    /// False when the item could not be located.
    pub known: bool,
}

impl ItemSpan {
    /// The span of the item's name (`Weight`), or `None` when unknown.
    pub fn head(&self, src: &Source) -> Option<Range<usize>> {
        self.known.then(|| src.tokens[self.open - 1].range.clone())
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Ident,
    /// A string literal: the content's byte range, and whether it holds escapes.
    Str {
        content: Range<usize>,
        escaped: bool,
    },
    Number,
    Punct(char),
}

#[derive(Debug, Clone)]
struct Token {
    kind: Kind,
    range: Range<usize>,
}

/// A source file with its tokens.
#[derive(Debug)]
pub struct Source {
    text: String,
    tokens: Vec<Token>,
}

impl Source {
    /// Lexes `text`. Never fails: what it does not understand becomes punctuation.
    pub fn new(text: &str) -> Source {
        Source {
            text: text.to_owned(),
            tokens: lex(text),
        }
    }

    /// The items of one kind (`"Op"`), in document order.
    fn items(&self, kind: &str) -> Vec<ItemSpan> {
        let mut out = Vec::new();
        for i in 0..self.tokens.len().saturating_sub(1) {
            if self.tokens[i].kind == Kind::Ident
                && &self.text[self.tokens[i].range.clone()] == kind
                && self.tokens[i + 1].kind == Kind::Punct('(')
            {
                let open = i + 1;
                let close = self.matching(open);
                out.push(ItemSpan {
                    start: self.tokens[i].range.start,
                    end: self.tokens[close].range.end,
                    open,
                    close,
                    known: true,
                });
            }
        }
        out
    }

    /// The first item of a kind (the file's `Model(` or `Arch(`).
    pub fn top(&self, kind: &str) -> ItemSpan {
        self.items(kind).into_iter().next().unwrap_or_default()
    }

    /// The token closing the bracket opened at token `open` (the last token if unbalanced).
    fn matching(&self, open: usize) -> usize {
        let mut depth = 0i64;
        for (j, t) in self.tokens.iter().enumerate().skip(open) {
            match t.kind {
                Kind::Punct('(' | '[' | '{') => depth += 1,
                Kind::Punct(')' | ']' | '}') => {
                    depth -= 1;
                    if depth == 0 {
                        return j;
                    }
                }
                _ => {}
            }
        }
        self.tokens.len() - 1
    }

    /// Token indices of a field's value inside an item: `name: VALUE`.
    fn field_tokens(&self, item: ItemSpan, name: &str) -> Option<Range<usize>> {
        if !item.known {
            return None;
        }
        let mut depth = 0i64;
        let mut j = item.open + 1;
        while j < item.close {
            let t = &self.tokens[j];
            match t.kind {
                Kind::Punct('(' | '[' | '{') => depth += 1,
                Kind::Punct(')' | ']' | '}') => depth -= 1,
                Kind::Ident
                    if depth == 0
                        && &self.text[t.range.clone()] == name
                        && self.tokens.get(j + 1).map(|t| &t.kind) == Some(&Kind::Punct(':')) =>
                {
                    let first = j + 2;
                    let mut d = 0i64;
                    let mut k = first;
                    while k < item.close {
                        match self.tokens[k].kind {
                            Kind::Punct('(' | '[' | '{') => d += 1,
                            Kind::Punct(')' | ']' | '}') => d -= 1,
                            Kind::Punct(',') if d == 0 => break,
                            _ => {}
                        }
                        k += 1;
                    }
                    return (k > first).then_some(first..k);
                }
                _ => {}
            }
            j += 1;
        }
        None
    }

    fn byte_range(&self, toks: Range<usize>) -> Range<usize> {
        self.tokens[toks.start].range.start..self.tokens[toks.end - 1].range.end
    }

    /// The byte range of a field's value (`["x", "w"]` of `args: ["x", "w"]`).
    pub fn field(&self, item: ItemSpan, name: &str) -> Option<Range<usize>> {
        self.field_tokens(item, name).map(|t| self.byte_range(t))
    }

    /// The byte range of the `index`-th element of a list-valued field.
    pub fn element(&self, item: ItemSpan, name: &str, index: usize) -> Option<Range<usize>> {
        let toks = self.field_tokens(item, name)?;
        if self.tokens[toks.start].kind != Kind::Punct('[') {
            return (index == 0).then(|| self.byte_range(toks));
        }
        let mut depth = 0i64;
        let mut start = toks.start + 1;
        let mut n = 0;
        for k in toks.start + 1..toks.end {
            match self.tokens[k].kind {
                Kind::Punct('(' | '[' | '{') => depth += 1,
                Kind::Punct(']' | ')' | '}') if depth == 0 => {
                    return (n == index && k > start).then(|| self.byte_range(start..k));
                }
                Kind::Punct(')' | ']' | '}') => depth -= 1,
                Kind::Punct(',') if depth == 0 => {
                    if n == index {
                        return (k > start).then(|| self.byte_range(start..k));
                    }
                    n += 1;
                    start = k + 1;
                }
                _ => {}
            }
        }
        None
    }

    /// The first string literal with this content inside a byte range.
    pub fn string_in(&self, within: Range<usize>, value: &str) -> Option<Range<usize>> {
        self.tokens.iter().find_map(|t| match &t.kind {
            Kind::Str { content, .. }
                if t.range.start >= within.start
                    && t.range.end <= within.end
                    && self.unescaped(content) == value =>
            {
                Some(t.range.clone())
            }
            _ => None,
        })
    }

    fn unescaped(&self, content: &Range<usize>) -> &str {
        &self.text[content.clone()]
    }

    /// Narrows a string literal's span to bytes `sub` of its content, when the literal has
    /// no escapes (so content offsets are source offsets); else the whole literal.
    pub fn inside_string(&self, literal: Range<usize>, sub: Range<usize>) -> Range<usize> {
        let tok = self.tokens.iter().find(|t| t.range == literal);
        match tok.map(|t| &t.kind) {
            Some(Kind::Str {
                content,
                escaped: false,
            }) if content.start + sub.end <= content.end => {
                content.start + sub.start..content.start + sub.end
            }
            _ => literal,
        }
    }

    /// Converts RON's 1-based line and column (in characters) to a byte offset.
    pub fn offset(&self, line: usize, col: usize) -> usize {
        let mut offset = 0;
        for (i, l) in self.text.split_inclusive('\n').enumerate() {
            if i + 1 == line {
                let in_line: usize = l
                    .chars()
                    .take(col.saturating_sub(1))
                    .map(char::len_utf8)
                    .sum();
                return offset + in_line;
            }
            offset += l.len();
        }
        self.text.len()
    }
}

/// Fills the `at` of every input and item of an architecture, in document order.
pub fn locate_arch(arch: &mut ArchFile, src: &Source) {
    let inputs = src.items("Input");
    if inputs.len() == arch.inputs.len() {
        for (input, at) in arch.inputs.iter_mut().zip(inputs) {
            input.at = at;
        }
    }
    let mut found = Found {
        ops: src.items("Op"),
        weights: src.items("Weight"),
        repeats: src.items("Repeat"),
        losses: src.items("Loss"),
        counts: [0; 4],
    };
    let mut counts = [0; 4];
    count(&arch.body, &mut counts);
    let lens = [
        found.ops.len(),
        found.weights.len(),
        found.repeats.len(),
        found.losses.len(),
    ];
    if counts == lens {
        assign(&mut arch.body, &mut found);
    }
}

struct Found {
    ops: Vec<ItemSpan>,
    weights: Vec<ItemSpan>,
    repeats: Vec<ItemSpan>,
    losses: Vec<ItemSpan>,
    counts: [usize; 4],
}

fn count(items: &[Item], counts: &mut [usize; 4]) {
    for item in items {
        match item {
            Item::Op { .. } => counts[0] += 1,
            Item::Weight { .. } => counts[1] += 1,
            Item::Repeat { body, .. } => {
                counts[2] += 1;
                count(body, counts);
            }
            Item::Loss { .. } => counts[3] += 1,
        }
    }
}

fn assign(items: &mut [Item], found: &mut Found) {
    for item in items {
        let (k, list, at) = match item {
            Item::Op { at, .. } => (0, &found.ops, at),
            Item::Weight { at, .. } => (1, &found.weights, at),
            Item::Repeat { at, .. } => (2, &found.repeats, at),
            Item::Loss { at, .. } => (3, &found.losses, at),
        };
        *at = list[found.counts[k]];
        found.counts[k] += 1;
        if let Item::Repeat { body, .. } = item {
            assign(body, found);
        }
    }
}

fn lex(text: &str) -> Vec<Token> {
    let b = text.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let start = i;
        if c.is_ascii_whitespace() {
            i += 1;
        } else if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            // RON block comments nest.
            let mut depth = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == b'"' {
            i += 1;
            let mut escaped = false;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    escaped = true;
                    i += 1;
                }
                i += 1;
            }
            let end = (i + 1).min(b.len());
            tokens.push(Token {
                kind: Kind::Str {
                    content: start + 1..i.min(b.len()),
                    escaped,
                },
                range: start..end,
            });
            i = end;
        } else if c == b'r'
            && matches!(b.get(i + 1), Some(b'"' | b'#'))
            && raw_string(b, i).is_some()
        {
            let (content, end) = raw_string(b, i).unwrap_or((i..i, i + 1));
            tokens.push(Token {
                kind: Kind::Str {
                    content,
                    escaped: false,
                },
                range: start..end,
            });
            i = end;
        } else if c == b'\'' {
            i += 1;
            while i < b.len() && b[i] != b'\'' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i = (i + 1).min(b.len());
            tokens.push(Token {
                kind: Kind::Number,
                range: start..i,
            });
        } else if c.is_ascii_alphabetic() || c == b'_' {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            tokens.push(Token {
                kind: Kind::Ident,
                range: start..i,
            });
        } else if c.is_ascii_digit() {
            while i < b.len()
                && (b[i].is_ascii_alphanumeric()
                    || b[i] == b'_'
                    || b[i] == b'.'
                    || (matches!(b[i], b'+' | b'-') && matches!(b[i - 1], b'e' | b'E')))
            {
                i += 1;
            }
            tokens.push(Token {
                kind: Kind::Number,
                range: start..i,
            });
        } else {
            let ch = text[i..].chars().next().unwrap_or('?');
            i += ch.len_utf8();
            tokens.push(Token {
                kind: Kind::Punct(ch),
                range: start..i,
            });
        }
    }
    tokens
}

/// A raw string `r#"..."#` starting at `i`: its content range and the offset after it.
fn raw_string(b: &[u8], i: usize) -> Option<(Range<usize>, usize)> {
    let mut j = i + 1;
    let mut hashes = 0;
    while b.get(j) == Some(&b'#') {
        hashes += 1;
        j += 1;
    }
    if b.get(j) != Some(&b'"') {
        return None;
    }
    let content_start = j + 1;
    let mut k = content_start;
    while k < b.len() {
        if b[k] == b'"'
            && b[k + 1..]
                .iter()
                .take(hashes)
                .filter(|&&h| h == b'#')
                .count()
                == hashes
        {
            return Some((content_start..k, k + 1 + hashes));
        }
        k += 1;
    }
    Some((content_start..b.len(), b.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_items_fields_and_elements_skipping_comments_and_strings() {
        let text = r#"// Op( in a comment
Arch(body: [ /* Op( */ Op(out: "x", op: Linear, args: ["a", "Op(", "b"]),
  Weight(name: "w", shape: ["h*2"])])"#;
        let src = Source::new(text);
        let ops = src.items("Op");
        assert_eq!(ops.len(), 1);
        let args = src.field(ops[0], "args").unwrap();
        assert_eq!(&text[args.clone()], r#"["a", "Op(", "b"]"#);
        let e2 = src.element(ops[0], "args", 2).unwrap();
        assert_eq!(&text[e2], r#""b""#);
        let w = src.items("Weight")[0];
        let lit = src
            .string_in(src.field(w, "shape").unwrap(), "h*2")
            .unwrap();
        assert_eq!(&text[src.inside_string(lit, 2..3)], "2");
        assert_eq!(src.offset(2, 1), text.find("Arch").unwrap());
    }
}
