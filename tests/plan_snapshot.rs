//! The readable plan of the tiny model, held as a snapshot: a change to ordering, liveness,
//! packing or the estimates shows up here as a reviewed diff (`cargo insta review`).

mod common;

use llmq_compiler::plan::{ShowOptions, show_plan};
use llmq_compiler::target::Precision;

#[test]
fn tiny_plan() {
    let plan = common::plan(
        "tiny.ron",
        &common::options(2, 16, 1, Precision::Bf16, 1 << 30),
    );
    insta::assert_snapshot!(show_plan(
        &plan,
        ShowOptions {
            detail: 3,
            layer: None
        }
    ));
}
