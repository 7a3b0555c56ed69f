//! The graph IR: typed IDs, tensors with roles, and the data-flow graph of ops.
//!
//! The graph holds data flow only; the order in which steps run is decided in `lower`.

mod graph;
mod ids;
mod tensor;
mod text;

pub use graph::{Dep, Graph, GraphError, Node, Phase, Rewrite};
pub use ids::{BufferId, NodeId, TensorId};
pub use tensor::{Category, Init, Part, Role, Tensor};
pub use text::write_graph;
