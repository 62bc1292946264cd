//! The model as data: what an architecture is (`ARCHITECTURES`), each
//! layer's description read from a file (`Config`, `LayerSpec`, `AttnSpec`,
//! `RopeParams`) and where its weights lie (`ModelTensors`). A leaf module:
//! the backends and the planner read it; the forward pass (`crate::model`)
//! follows it.

mod config;
mod weights;

pub use config::{
    ARCHITECTURES, Activation, Arch, ArchDesc, AttnSpec, Config, ConfigError, LayerSpec, MoeSpec,
    Presence, RopeKind, RopeParams, RopeScaling,
};
pub use weights::{ExpertWeights, Ffn, LayerTensors, ModelTensors, TensorRef, WeightError};
