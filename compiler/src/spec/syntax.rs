//! The serde types of the two RON files: a model file (`Model(...)`) binds numbers and names
//! an architecture file (`Arch(...)`), which is a graph of weights and ops.
//!
//! Deserialisation drops source positions; every item carries an `at` field that
//! [`locate`](super::locate) fills afterwards, in document order.

use super::locate::ItemSpan;
use indexmap::IndexMap;
use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use std::fmt;

/// A model file: numbers bound to the symbols an architecture declares.
#[derive(Debug, Deserialize)]
#[serde(rename = "Model", deny_unknown_fields)]
pub struct ModelFile {
    /// The model's name (`qwen2.5-7b`).
    pub name: String,
    /// Path of the architecture file, relative to the model file.
    pub arch: String,
    /// Dimension symbols.
    #[serde(default)]
    pub dims: IndexMap<String, u64>,
    /// Real-valued constants (`rope_theta`, `rms_eps`).
    #[serde(default)]
    pub scalars: IndexMap<String, f64>,
    /// Booleans tested by `when`.
    #[serde(default)]
    pub flags: IndexMap<String, bool>,
}

/// An architecture file: the symbols it needs, its inputs, and its body.
#[derive(Debug, Deserialize)]
#[serde(rename = "Arch", deny_unknown_fields)]
pub struct ArchFile {
    /// The family's name (`qwen2`).
    pub name: String,
    /// Dimension symbols the model file must bind (`batch` and `seq` are always bound).
    #[serde(default)]
    pub dims: Vec<String>,
    /// Scalar symbols the model file must bind.
    #[serde(default)]
    pub scalars: Vec<String>,
    /// Flags the model file must bind.
    #[serde(default)]
    pub flags: Vec<String>,
    /// Tensors written by the host: `tokens` and `targets`.
    pub inputs: Vec<Input>,
    /// The forward graph, in program order.
    pub body: Vec<Item>,
}

/// A host-written input tensor.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// Its name.
    pub name: String,
    /// Its shape, as dimension expressions.
    pub shape: Vec<Value>,
    /// Its dtype name (`i32` unless given).
    #[serde(default)]
    pub dtype: Option<String>,
    /// Where it is in the file.
    #[serde(skip)]
    pub at: ItemSpan,
}

/// One statement of a body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Item {
    /// A parameter.
    Weight {
        /// Its name in scope (and the last part of its tensor name).
        name: String,
        /// Its shape, as dimension expressions.
        shape: Vec<Value>,
        /// How it is initialised.
        init: InitSpec,
        /// The Hugging Face tensor name; `{i}` is replaced by the repeat index named `i`.
        #[serde(default)]
        hf: Option<String>,
        /// A condition: `flag` or `!flag`.
        #[serde(default)]
        when: Option<String>,
        /// Where it is in the file.
        #[serde(skip)]
        at: ItemSpan,
    },
    /// An op applied to named tensors.
    Op {
        /// Names bound to the outputs, in order (fewer than the op's outputs is allowed).
        out: Names,
        /// The op and its attributes.
        op: OpSpecSyntax,
        /// Names of the operands.
        args: Vec<String>,
        /// A condition: `flag` or `!flag`.
        #[serde(default)]
        when: Option<String>,
        /// Where it is in the file.
        #[serde(skip)]
        at: ItemSpan,
    },
    /// `count` copies of a block.
    Repeat {
        /// How many times, as a dimension expression.
        count: Value,
        /// The iteration variable, usable as `{index}` in `hf` strings.
        index: String,
        /// The prefix of the tensors made inside (`layers` → `layers.3.q`).
        name: String,
        /// The block.
        body: Vec<Item>,
        /// A condition: `flag` or `!flag`.
        #[serde(default)]
        when: Option<String>,
        /// Where it is in the file.
        #[serde(skip)]
        at: ItemSpan,
    },
    /// The op computing the loss (its output is the model's loss).
    Loss {
        /// The op.
        op: OpSpecSyntax,
        /// Names of the operands.
        args: Vec<String>,
        /// A condition: `flag` or `!flag`.
        #[serde(default)]
        when: Option<String>,
        /// Where it is in the file.
        #[serde(skip)]
        at: ItemSpan,
    },
}

/// Weight initialisation as written in the spec.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum InitSpec {
    /// All zeros.
    Zeros,
    /// All ones.
    Ones,
    /// Normal with mean zero.
    Normal {
        /// Standard deviation.
        std: f64,
    },
}

/// The forward ops of the catalogue, with attributes as expressions or scalar names.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename = "Op", deny_unknown_fields)]
pub enum OpSpecSyntax {
    /// Row lookup.
    Embedding,
    /// RMS normalisation over groups of the last dimension of the weight's length.
    RmsNorm {
        /// A scalar name or a number.
        eps: Value,
    },
    /// `x · Wᵀ`.
    Linear,
    /// Bias broadcast over rows.
    BiasAdd,
    /// Rotary position embedding.
    Rope {
        /// A dimension expression.
        head_dim: Value,
        /// A scalar name or a number.
        theta: Value,
    },
    /// Causal grouped-query attention.
    Attention {
        /// A dimension expression.
        heads: Value,
        /// A dimension expression.
        kv_heads: Value,
        /// A dimension expression.
        head_dim: Value,
    },
    /// `silu(gate) · up`.
    SwiGlu,
    /// Elementwise sum.
    Add,
    /// Mean cross-entropy.
    CrossEntropy,
}

/// An attribute or shape entry: a string (an expression or a symbol name) or a number.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A dimension expression or a scalar name.
    Str(String),
    /// A non-negative integer literal.
    Int(u64),
    /// Any other number literal.
    Float(f64),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Str(s) => write!(f, "\"{s}\""),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x}"),
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Value;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string (an expression or a symbol) or a number")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
                Ok(Value::Str(v.to_owned()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
                Ok(Value::Int(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
                Ok(if v >= 0 {
                    Value::Int(v as u64)
                } else {
                    Value::Float(v as f64)
                })
            }
            fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
                u64::try_from(v)
                    .map(Value::Int)
                    .map_err(|_| E::custom("integer too large"))
            }
            fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
                match u64::try_from(v) {
                    Ok(u) => Ok(Value::Int(u)),
                    Err(_) => Ok(Value::Float(v as f64)),
                }
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
                Ok(Value::Float(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// One name or a list of names (`out: "x"` or `out: ["h", "h_rstd"]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Names(pub Vec<String>);

impl<'de> Deserialize<'de> for Names {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Names;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a name or a list of names")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Names, E> {
                Ok(Names(vec![v.to_owned()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Names, A::Error> {
                let mut names = Vec::new();
                while let Some(n) = seq.next_element::<String>()? {
                    names.push(n);
                }
                Ok(Names(names))
            }
        }
        d.deserialize_any(V)
    }
}
