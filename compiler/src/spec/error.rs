//! The front-end's one error type: what went wrong, where (file, byte span, label) and a hint.
//!
//! It renders through miette with the file name, line and column, the offending line and a
//! label saying what was expected.

use miette::{Diagnostic, LabeledSpan, NamedSource, SourceCode, SourceSpan};
use std::fmt;
use std::ops::Range;

/// The kind of a [`SpecError`], also its diagnostic code (`spec::unknown_name`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A file could not be read.
    Io,
    /// The architecture file named by a model file does not exist or cannot be read.
    MissingArch,
    /// Malformed RON.
    Syntax,
    /// An op, init or item kind the language does not know.
    UnknownVariant,
    /// A field the construct does not have.
    UnknownField,
    /// A field the construct requires is absent.
    MissingField,
    /// A symbol in a dimension expression that nothing binds.
    UnboundSymbol,
    /// A malformed dimension expression, or arithmetic that fails (inexact `/`, overflow).
    BadExpression,
    /// A tensor name used before it is defined.
    UndefinedName,
    /// A dimension, scalar or flag the architecture declares but the model file does not bind.
    MissingBinding,
    /// A dimension, scalar or flag the model file binds but the architecture does not declare.
    UnexpectedBinding,
    /// A `when` condition on a flag the architecture does not declare.
    UnknownFlag,
    /// A scalar attribute naming no declared scalar.
    UnknownScalar,
    /// Operands whose shapes do not fit the op (from the op's shape rule).
    ShapeMismatch,
    /// An operand of the wrong dtype (from the op's dtype rule).
    DTypeMismatch,
    /// The wrong number of operands or output names.
    Arity,
    /// A structural rule of the language: one loss, `tokens` and `targets` inputs, names.
    Invalid,
}

impl ErrorKind {
    /// The diagnostic code.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::Io => "spec::io",
            ErrorKind::MissingArch => "spec::missing_arch",
            ErrorKind::Syntax => "spec::syntax",
            ErrorKind::UnknownVariant => "spec::unknown_variant",
            ErrorKind::UnknownField => "spec::unknown_field",
            ErrorKind::MissingField => "spec::missing_field",
            ErrorKind::UnboundSymbol => "spec::unbound_symbol",
            ErrorKind::BadExpression => "spec::bad_expression",
            ErrorKind::UndefinedName => "spec::undefined_name",
            ErrorKind::MissingBinding => "spec::missing_binding",
            ErrorKind::UnexpectedBinding => "spec::unexpected_binding",
            ErrorKind::UnknownFlag => "spec::unknown_flag",
            ErrorKind::UnknownScalar => "spec::unknown_scalar",
            ErrorKind::ShapeMismatch => "spec::shape_mismatch",
            ErrorKind::DTypeMismatch => "spec::dtype_mismatch",
            ErrorKind::Arity => "spec::arity",
            ErrorKind::Invalid => "spec::invalid",
        }
    }
}

/// An error in a model or architecture file, with its location.
#[derive(Debug)]
pub struct SpecError {
    /// What kind of error.
    pub kind: ErrorKind,
    inner: Box<Detail>,
}

#[derive(Debug)]
struct Detail {
    message: String,
    label: String,
    help: Option<String>,
    file: String,
    span: Option<Range<usize>>,
    source: Option<NamedSource<String>>,
}

impl SpecError {
    /// An error about bytes `span` of `file`.
    pub(crate) fn new(
        kind: ErrorKind,
        file: &SourceFile,
        span: Option<Range<usize>>,
        message: impl Into<String>,
        label: impl Into<String>,
    ) -> Self {
        SpecError {
            kind,
            inner: Box::new(Detail {
                message: message.into(),
                label: label.into(),
                help: None,
                file: file.name.clone(),
                span,
                source: Some(NamedSource::new(file.name.clone(), file.text.clone())),
            }),
        }
    }

    /// An error about a file that has no text to show (it could not be read).
    pub(crate) fn without_source(kind: ErrorKind, file: &str, message: impl Into<String>) -> Self {
        SpecError {
            kind,
            inner: Box::new(Detail {
                message: message.into(),
                label: String::new(),
                help: None,
                file: file.to_owned(),
                span: None,
                source: None,
            }),
        }
    }

    /// Adds a hint.
    pub(crate) fn with_help(mut self, help: impl Into<String>) -> Self {
        self.inner.help = Some(help.into());
        self
    }

    /// The one-line message.
    pub fn message(&self) -> &str {
        &self.inner.message
    }

    /// The text of the label under the offending span (what was expected).
    pub fn label(&self) -> &str {
        &self.inner.label
    }

    /// The file the error is about, as named in messages.
    pub fn file(&self) -> &str {
        &self.inner.file
    }

    /// The byte range in that file, when known.
    pub fn span(&self) -> Option<Range<usize>> {
        self.inner.span.clone()
    }

    /// The 1-based line and column of the span's start, when known.
    pub fn line_col(&self) -> Option<(usize, usize)> {
        let (span, src) = (self.inner.span.as_ref()?, self.inner.source.as_ref()?);
        let text = src.inner();
        let before = &text[..span.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Some((line, col))
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.inner.message)
    }
}

impl std::error::Error for SpecError {}

impl Diagnostic for SpecError {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(self.kind.code()))
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.inner
            .help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        match (&self.inner.source, &self.inner.span) {
            (Some(s), Some(_)) => Some(s as &dyn SourceCode),
            _ => None,
        }
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let span = self.inner.span.clone()?;
        self.inner.source.as_ref()?;
        let label = (!self.inner.label.is_empty()).then(|| self.inner.label.clone());
        Some(Box::new(std::iter::once(LabeledSpan::new_with_span(
            label,
            SourceSpan::from(span),
        ))))
    }
}

/// A file of the spec: its name for messages and its text.
#[derive(Debug, Clone)]
pub(crate) struct SourceFile {
    pub name: String,
    pub text: String,
}
