//! hellas-model: what a model file says and how much memory it will take.
//!
//! * [`gguf`]: reading a GGUF header (metadata, tensor table) and the model facts in it.
//! * [`plan`]: the memory one llama-server needs for a model at a context, against a budget.
//! * [`projector`]: the memory of a vision projector (`--mmproj`) beside it.
//! * [`split`] and [`pool`]: a model too big for one box, dealt out over several.
//!
//! Pure: serde and the standard library only, no I/O beyond reading a file's header, so the
//! daemon, the fuzz target and the planner's accuracy tests all depend on this crate alone.

pub mod gguf;
pub mod plan;
pub mod pool;
pub mod projector;
pub mod split;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
