//! One module per subcommand.
pub mod bench;
pub mod chat;
pub mod convert;
pub mod debug;
pub mod eval;
pub mod gatt;
pub mod generate;
pub mod gpu_check;
pub mod info;
pub mod init;
pub mod pipeline;
pub mod ppo;
pub mod pretrain;
pub mod report;
pub mod sft;
pub mod tokenizer;
pub mod train_common;
