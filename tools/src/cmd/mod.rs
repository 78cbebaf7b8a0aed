//! One module per subcommand.
pub mod bench;
pub mod debug;
pub mod eval;
pub mod generate;
pub mod gpu_check;
pub mod info;
pub mod pretrain;
pub mod tokenizer;
pub mod train_common;
