//! Ghost Attention (PAPER.md section 7; Llama 2 section 3.3): multi-turn
//! instruction following, its data construction and its measurements.
//!
//! The stages, each a function the pipeline can call:
//! 1. instructions: constraint families from a data file, random
//!    combinations, half of them shortened ([`instructions`]);
//! 2. dialogs: multi-turn records, or single-turn records chained
//!    ([`dialogs::build_dialogs`]); single-turn system-message
//!    demonstrations for SFT ([`dialogs::demos`]);
//! 3. GAtt samples: the instruction on every user turn while the policy
//!    re-samples the answers turn by turn (optionally best of K by a
//!    reward model), then kept once as the first turn's system message,
//!    loss on the last answer only ([`build::build`]; the samples are SFT
//!    records with `"loss": "last"`, trained by `train-tool sft --packing
//!    whole`);
//! 4. evaluation: adherence by turn for every checkable family
//!    ([`eval::converse`], [`eval::adherence`]; the checkers in
//!    [`checks`]) and the attention mass on the system message
//!    ([`eval::system_attention`]; `train-tool gatt eval` draws it as a heat map).
//!
//! All text generation goes through [`sample::generate_answers`].
//!
//! Public items: the modules [`instructions`], [`checks`], [`dialogs`],
//! [`build`](mod@build), [`eval`], [`sample`], and the re-exports below.

pub mod build;
pub mod checks;
pub mod dialogs;
pub mod eval;
pub mod instructions;
pub mod sample;

pub use build::{build, choose, every_turn_of, BuildOpts, BuildStats, Built, Examples, GattSample};
pub use checks::{comply, passes, words};
pub use dialogs::{build_dialogs, demos, user_prompts, Dialog, DialogOpts, Dialogs};
pub use eval::{
    adherence, by_turn, converse, eval_dialogs, measured_turns, system_attention, EvalDialog, EvalOpts, Rate, SysAttention, Transcript, TurnAdherence,
};
pub use instructions::{load_instructions, Check, Constraint, Family, Instruction, InstructionSet};
pub use sample::generate_answers;
