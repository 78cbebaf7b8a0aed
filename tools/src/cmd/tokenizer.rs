//! `train-tool tokenizer {train,encode,decode,info,bench,convert}` and
//! `train-tool tokenize`: the command line of the tokenizer
//! (llama2_model::tokenizer) and of corpus -> llm.c token shards
//! (llama2_model::shards).
//!
//! Public items: [`TokenizerArgs`], [`TokenizeArgs`], [`run_tokenizer`],
//! [`run_tokenize`].

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{ArgAction, Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use llama2_model::chat::{ChatFormat, Message, Role};
use llama2_model::shards::ShardWriter;
use llama2_model::tokenizer::train::{TrainConfig, Trainer};
use llama2_model::tokenizer::{DecodeOptions, EncodeCache, EncodeOptions, Tokenizer};
use rayon::prelude::*;
use serde_json::{json, Value};

#[derive(Args)]
pub struct TokenizerArgs {
    #[command(subcommand)]
    cmd: TokCmd,
}

#[derive(Subcommand)]
enum TokCmd {
    /// Train a BPE vocabulary with the Llama settings; writes a SentencePiece .model
    Train(TrainArgs),
    /// Encode JSONL lines {"text": ...} (or {"messages": [...]}, rendered with the chat template) to lines {"ids": [...]}, in order
    Encode(EncodeArgs),
    /// Decode JSONL lines {"ids": [...]} to lines {"text": ...}, in order
    Decode(DecodeArgs),
    /// Print a summary of a tokenizer file (GGUF, .model)
    Info(InfoArgs),
    /// Measure encoding throughput (MB/s) on text files
    Bench(BenchArgs),
    /// Write a tokenizer (GGUF or .model) as a SentencePiece .model
    Convert(ConvertArgs),
}

#[derive(Args)]
struct TrainArgs {
    /// Training text: plain text files (one sentence per line) or .jsonl files of {"text": ...} records
    #[arg(long, required = true, num_args = 1..)]
    input: Vec<PathBuf>,
    /// Vocabulary size, counting UNK, BOS, EOS and (with byte fallback) the 256 byte pieces
    #[arg(long, value_parser = clap::value_parser!(u32).range(4..=1_048_576))]
    vocab_size: u32,
    /// Output SentencePiece .model file
    #[arg(long)]
    out: PathBuf,
    /// Byte fallback: characters outside the vocabulary become <0xHH> byte pieces (Llama: true)
    #[arg(long, default_value_t = true, action = ArgAction::Set)]
    byte_fallback: bool,
    /// Every digit is its own piece (Llama: true)
    #[arg(long, default_value_t = true, action = ArgAction::Set)]
    split_digits: bool,
    /// Prepend a space (U+2581) to each text (Llama: true)
    #[arg(long, default_value_t = true, action = ArgAction::Set)]
    add_dummy_prefix: bool,
    /// Fraction of character occurrences whose characters become pieces (Llama: 0.99995)
    #[arg(long, default_value_t = 0.99995, value_parser = parse_unit_open_closed)]
    character_coverage: f64,
    /// Longest piece in characters
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=256))]
    max_piece_chars: u32,
}

#[derive(Args)]
struct EncodeArgs {
    /// Tokenizer: a file (GGUF vocabulary or model, SentencePiece .model, tokenizer.json) or a model directory
    #[arg(long)]
    tokenizer: PathBuf,
    /// JSONL input, one {"text": ...} per line, or {"messages": [{"role", "content"}, ...]} rendered with the
    /// tokenizer's chat template (tokenizer_config.json / GGUF tokenizer.chat_template; Llama-2-chat if it has none),
    /// written as {"ids", "text", "mask"} (mask: the tokens a fine-tune learns)
    #[arg(long)]
    input: PathBuf,
    /// For {"messages"} lines: end with the template's generation prompt (the dialog must end with a user message)
    #[arg(long)]
    add_generation_prompt: bool,
    /// Output JSONL file (default: standard output)
    #[arg(long)]
    output: Option<PathBuf>,
    /// Prepend BOS to each text
    #[arg(long)]
    bos: bool,
    /// Append EOS to each text
    #[arg(long)]
    eos: bool,
    /// Worker threads (default: all cores)
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    threads: Option<u32>,
}

#[derive(Args)]
struct DecodeArgs {
    /// Tokenizer file: GGUF vocabulary or SentencePiece .model
    #[arg(long)]
    tokenizer: PathBuf,
    /// JSONL input, one {"ids": [...]} per line
    #[arg(long)]
    input: PathBuf,
    /// Output JSONL file (default: standard output)
    #[arg(long)]
    output: Option<PathBuf>,
}

#[derive(Args)]
struct InfoArgs {
    /// Tokenizer file: GGUF vocabulary or SentencePiece .model
    #[arg(long)]
    tokenizer: PathBuf,
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum Unit {
    /// Each file is one text
    File,
    /// Each line is one text
    Line,
}

#[derive(Args)]
struct BenchArgs {
    /// Tokenizer file: GGUF vocabulary or SentencePiece .model
    #[arg(long)]
    tokenizer: PathBuf,
    /// Text files to encode
    #[arg(long, required = true, num_args = 1..)]
    input: Vec<PathBuf>,
    /// Worker threads
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    threads: u32,
    /// Timed runs (the best and the median are reported)
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    repeat: u32,
    /// What one encode call gets: a whole file or a line
    #[arg(long, value_enum, default_value_t = Unit::File)]
    unit: Unit,
    /// Disable the word cache (to measure what it gives)
    #[arg(long)]
    no_cache: bool,
    /// Print one JSON object
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ConvertArgs {
    /// Tokenizer file to read: GGUF vocabulary or SentencePiece .model
    #[arg(long)]
    tokenizer: PathBuf,
    /// SentencePiece .model to write
    #[arg(long)]
    out: PathBuf,
}

#[derive(Clone, Copy, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum Separator {
    /// BOS before each document and EOS after it (Llama)
    Both,
    /// BOS before each document
    Bos,
    /// EOS after each document
    Eos,
}

#[derive(Args)]
pub struct TokenizeArgs {
    /// Tokenizer file: GGUF vocabulary or SentencePiece .model (vocabulary of at most 65536)
    #[arg(long)]
    tokenizer: PathBuf,
    /// Corpus files: .jsonl (one {"text": ...} document per line) or text (one document per file)
    #[arg(long, required = true, num_args = 1..)]
    input: Vec<PathBuf>,
    /// Output directory for train_NNNNNN.bin, val_NNNNNN.bin and tokenize.json
    #[arg(long)]
    out_dir: PathBuf,
    /// Fraction of documents, spread evenly, that go to the validation split
    #[arg(long, default_value_t = 0.0, value_parser = parse_unit_closed_open)]
    val_fraction: f64,
    /// Tokens per shard file
    #[arg(long, default_value_t = 100_000_000, value_parser = clap::value_parser!(u64).range(1..=2_147_483_647))]
    shard_tokens: u64,
    /// Document separators
    #[arg(long, value_enum, default_value_t = Separator::Both)]
    separator: Separator,
    /// Worker threads (default: all cores)
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    threads: Option<u32>,
    /// Plain-text documents are read and encoded in segments of about this many bytes (bounds memory)
    #[arg(long, default_value_t = 4 << 20, value_parser = clap::value_parser!(u64).range(64..=1 << 30), hide_short_help = true)]
    segment_bytes: u64,
}

fn parse_unit_open_closed(s: &str) -> std::result::Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if v > 0.0 && v <= 1.0 {
        Ok(v)
    } else {
        Err(format!("{v} is not in (0, 1]"))
    }
}

fn parse_unit_closed_open(s: &str) -> std::result::Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if (0.0..1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not in [0, 1)"))
    }
}

fn load(path: &Path) -> Result<Tokenizer> {
    Tokenizer::find(path).with_context(|| format!("loading the tokenizer {}", path.display()))
}

fn pool(threads: Option<u32>) -> Result<rayon::ThreadPool> {
    let mut b = rayon::ThreadPoolBuilder::new();
    if let Some(t) = threads {
        b = b.num_threads(t as usize);
    }
    b.build().context("cannot start worker threads")
}

fn bar(total: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template(&format!("{what} {{bar:40}} {{bytes}}/{{total_bytes}} {{bytes_per_sec}} ETA {{eta}} {{msg}}"))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb
}

fn out_writer(output: &Option<PathBuf>) -> Result<Box<dyn Write>> {
    Ok(match output {
        Some(p) => Box::new(BufWriter::new(File::create(p).with_context(|| format!("cannot create {}; HINT: check the directory", p.display()))?)),
        None => Box::new(BufWriter::new(std::io::stdout().lock())),
    })
}

fn open_lines(path: &Path) -> Result<std::io::Lines<BufReader<File>>> {
    let f = File::open(path).with_context(|| format!("cannot open {}; HINT: check the path", path.display()))?;
    Ok(BufReader::with_capacity(1 << 20, f).lines())
}

/// The "text" of one JSONL record, or an error naming file and line.
fn text_field(line: &str, path: &Path, n: usize) -> Result<String> {
    let v: Value =
        serde_json::from_str(line).with_context(|| format!("{}:{n}: not valid JSON; HINT: each line must be one {{\"text\": ...}} object", path.display()))?;
    match v.get("text") {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => bail!("{}:{n}: \"text\" is {}, not a string; HINT: each line must be {{\"text\": \"...\"}}", path.display(), kind(other)),
        None => bail!("{}:{n}: no \"text\" field; HINT: each line must be {{\"text\": \"...\"}}", path.display()),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub fn run_tokenizer(a: TokenizerArgs) -> Result<()> {
    match a.cmd {
        TokCmd::Train(a) => train(a),
        TokCmd::Encode(a) => encode(a),
        TokCmd::Decode(a) => decode(a),
        TokCmd::Info(a) => info(a),
        TokCmd::Bench(a) => bench(a),
        TokCmd::Convert(a) => {
            let t = load(&a.tokenizer)?;
            t.save_spm_model(&a.out)?;
            eprintln!("wrote {} ({} pieces)", a.out.display(), t.vocab_size());
            Ok(())
        }
    }
}

fn train(a: TrainArgs) -> Result<()> {
    let cfg = TrainConfig {
        vocab_size: a.vocab_size,
        byte_fallback: a.byte_fallback,
        split_digits: a.split_digits,
        add_dummy_prefix: a.add_dummy_prefix,
        character_coverage: a.character_coverage,
        max_piece_chars: a.max_piece_chars as usize,
        ..TrainConfig::default()
    };
    eprintln!("[tokenizer train] {}", serde_json::to_string(&cfg)?);
    let mut tr = Trainer::new(cfg.clone())?;
    let total: u64 = a
        .input
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).with_context(|| format!("cannot read {}; HINT: check the path", p.display())))
        .sum::<Result<u64>>()?;
    let pb = bar(total, "reading");
    for p in &a.input {
        let jsonl = p.extension().is_some_and(|e| e == "jsonl");
        for (n, line) in open_lines(p)?.enumerate() {
            let line = line.with_context(|| format!("{}:{}: cannot read (not UTF-8?); HINT: training text must be UTF-8", p.display(), n + 1))?;
            pb.inc(line.len() as u64 + 1);
            if jsonl {
                if line.trim().is_empty() {
                    continue;
                }
                tr.add_text(&text_field(&line, p, n + 1)?);
            } else {
                tr.add_sentence(&line);
            }
        }
    }
    pb.finish_and_clear();
    eprintln!("{} sentences ({} longer than {} bytes skipped), {} distinct words", tr.sentences, tr.skipped_long, cfg.max_sentence_bytes, tr.n_words());
    let pb = ProgressBar::new(0);
    pb.set_style(ProgressStyle::with_template("merges {bar:40} {pos}/{len} ETA {eta}").unwrap_or_else(|_| ProgressStyle::default_bar()));
    let t = tr.train(&mut |p| {
        pb.set_length(p.merges_total as u64);
        pb.set_position(p.merges_done as u64);
    })?;
    pb.finish_and_clear();
    t.save_spm_model(&a.out)?;
    let mut meta = a.out.as_os_str().to_owned();
    meta.push(".json");
    std::fs::write(&meta, serde_json::to_string_pretty(&json!({"config": cfg, "inputs": a.input, "info": t.info()}))?)
        .with_context(|| format!("cannot write {}", PathBuf::from(&meta).display()))?;
    eprintln!("wrote {} ({} pieces) and its settings to {}", a.out.display(), t.vocab_size(), PathBuf::from(meta).display());
    Ok(())
}

/// Lines per parallel batch of encode.
const ENCODE_BATCH_LINES: usize = 4096;

/// The dialog of a {"messages": [...]} line, if the line is one.
fn messages_field(line: &str, path: &Path, n: usize) -> Result<Option<Vec<Message>>> {
    let v: Value = serde_json::from_str(line)
        .with_context(|| format!("{}:{n}: not valid JSON; HINT: each line is one JSON object: {{\"text\": ...}} or {{\"messages\": [...]}}", path.display()))?;
    let Some(m) = v.get("messages") else { return Ok(None) };
    let hint = "HINT: \"messages\" is [{\"role\": \"system\"|\"user\"|\"assistant\", \"content\": \"...\"}, ...]";
    let arr = m.as_array().with_context(|| format!("{}:{n}: \"messages\" is not an array; {hint}", path.display()))?;
    let mut d = Vec::with_capacity(arr.len());
    for (i, x) in arr.iter().enumerate() {
        let role = x.get("role").and_then(Value::as_str).and_then(Role::parse);
        let content = x.get("content").and_then(Value::as_str);
        let (Some(role), Some(content)) = (role, content) else { bail!("{}:{n}: message {i} lacks a known role or a content string; {hint}", path.display()) };
        d.push(Message::new(role, content));
    }
    Ok(Some(d))
}

/// One {"messages"} line: the rendered dialog's ids, text and loss mask.
fn encode_messages(t: &Tokenizer, fmt: &ChatFormat, d: &[Message], gen: bool) -> Result<Value> {
    if gen {
        let ids = fmt.encode_prompt(t, d)?;
        let text = match fmt {
            ChatFormat::Template(tm) => tm.render(d, true)?,
            ChatFormat::Llama2 => t.decode_with(&ids, DecodeOptions { keep_control: true, strip_dummy_prefix: true })?,
        };
        return Ok(json!({ "ids": ids, "text": text }));
    }
    let (ids, mask) = fmt.encode_dialog(t, d)?;
    let text = match fmt {
        ChatFormat::Template(tm) => tm.render(d, false)?,
        ChatFormat::Llama2 => t.decode_with(&ids, DecodeOptions { keep_control: true, strip_dummy_prefix: true })?,
    };
    Ok(json!({ "ids": ids, "text": text, "mask": mask.iter().map(|&m| u8::from(m)).collect::<Vec<_>>() }))
}

fn encode(a: EncodeArgs) -> Result<()> {
    let t = load(&a.tokenizer)?;
    let fmt = ChatFormat::for_tokenizer(&t)?;
    let opts = EncodeOptions { bos: a.bos, eos: a.eos };
    let pool = pool(a.threads)?;
    let mut out = out_writer(&a.output)?;
    let mut lines = open_lines(&a.input)?.enumerate();
    let mut batch: Vec<(usize, String)> = Vec::with_capacity(ENCODE_BATCH_LINES);
    loop {
        batch.clear();
        for (n, line) in lines.by_ref() {
            let line = line.with_context(|| format!("{}:{}: cannot read (not UTF-8?)", a.input.display(), n + 1))?;
            batch.push((n + 1, line));
            if batch.len() == ENCODE_BATCH_LINES {
                break;
            }
        }
        if batch.is_empty() {
            break;
        }
        let encoded: Vec<Result<String>> = pool.install(|| {
            batch
                .par_iter()
                .map_init(EncodeCache::new, |cache, (n, line)| {
                    if let Some(d) = messages_field(line, &a.input, *n)? {
                        let v = encode_messages(&t, &fmt, &d, a.add_generation_prompt).with_context(|| format!("{}:{n}", a.input.display()))?;
                        return Ok(serde_json::to_string(&v)?);
                    }
                    let text = text_field(line, &a.input, *n)?;
                    let ids = t.encode_with(&text, opts, cache)?;
                    Ok(serde_json::to_string(&json!({ "ids": ids }))?)
                })
                .collect()
        });
        for e in encoded {
            writeln!(out, "{}", e?)?;
        }
    }
    out.flush()?;
    Ok(())
}

fn decode(a: DecodeArgs) -> Result<()> {
    let t = load(&a.tokenizer)?;
    let mut out = out_writer(&a.output)?;
    let hint = "HINT: each line must be {\"ids\": [non-negative integers]}";
    for (n, line) in open_lines(&a.input)?.enumerate() {
        let n = n + 1;
        let line = line.with_context(|| format!("{}:{n}: cannot read", a.input.display()))?;
        let v: Value = serde_json::from_str(&line).with_context(|| format!("{}:{n}: not valid JSON; {hint}", a.input.display()))?;
        let Some(arr) = v.get("ids").and_then(Value::as_array) else {
            bail!("{}:{n}: no \"ids\" array; {hint}", a.input.display());
        };
        let ids = arr
            .iter()
            .map(|x| x.as_u64().and_then(|u| u32::try_from(u).ok()))
            .collect::<Option<Vec<u32>>>()
            .with_context(|| format!("{}:{n}: an id is not a non-negative integer; {hint}", a.input.display()))?;
        let text = t.decode(&ids).with_context(|| format!("{}:{n}", a.input.display()))?;
        writeln!(out, "{}", serde_json::to_string(&json!({ "text": text }))?)?;
    }
    out.flush()?;
    Ok(())
}

fn info(a: InfoArgs) -> Result<()> {
    let t = load(&a.tokenizer)?;
    let i = t.info();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&i)?);
        return Ok(());
    }
    let v = serde_json::to_value(&i)?;
    println!("tokenizer {}", a.tokenizer.display());
    if let Value::Object(m) = v {
        for (k, v) in m {
            println!("  {k:<26} {v}");
        }
    }
    let show: Vec<String> = (0..t.vocab_size().min(8) as u32)
        .chain((t.vocab_size() as u32).saturating_sub(3)..t.vocab_size() as u32)
        .map(|id| format!("{id}:{:?}", t.id_to_piece(id).unwrap_or("")))
        .collect();
    println!("  {:<26} {}", "pieces (first, last)", show.join(" "));
    Ok(())
}

fn bench(a: BenchArgs) -> Result<()> {
    let t = load(&a.tokenizer)?;
    let mut texts: Vec<String> = Vec::new();
    for p in &a.input {
        let s = std::fs::read_to_string(p).with_context(|| format!("cannot read {} as UTF-8 text; HINT: check the path", p.display()))?;
        match a.unit {
            Unit::File => texts.push(s),
            Unit::Line => texts.extend(s.lines().map(str::to_string)),
        }
    }
    let bytes: usize = texts.iter().map(String::len).sum();
    let pool = pool(Some(a.threads))?;
    let opts = EncodeOptions::default();
    let use_cache = !a.no_cache;
    let run = || -> Result<(f64, usize)> {
        let t0 = Instant::now();
        // fresh caches in every run (one per rayon work split, as
        // `encode_batch` does): no run profits from an earlier one
        let n: Result<Vec<usize>> = pool.install(|| {
            texts
                .par_iter()
                .map_init(EncodeCache::new, |cache, s| {
                    let mut out = Vec::with_capacity(s.len() / 3);
                    t.encode_into(s, opts, true, use_cache, cache, &mut out)?;
                    Ok(out.len())
                })
                .collect()
        });
        Ok((t0.elapsed().as_secs_f64(), n?.iter().sum()))
    };
    run()?; // warm-up
    let mut secs = Vec::new();
    let mut tokens = 0;
    for _ in 0..a.repeat {
        let (s, n) = run()?;
        secs.push(s);
        tokens = n;
    }
    secs.sort_by(f64::total_cmp);
    let mbps = |s: f64| bytes as f64 / 1e6 / s;
    let best = mbps(secs[0]);
    let median = mbps(secs[secs.len() / 2]);
    let r = json!({
        "tool": "llama2 train-tool tokenizer bench",
        "tokenizer": a.tokenizer, "threads": a.threads, "texts": texts.len(),
        "unit": match a.unit { Unit::File => "file", Unit::Line => "line" },
        "cache": use_cache, "bytes": bytes, "tokens": tokens, "runs": a.repeat,
        "mb_per_s_best": best, "mb_per_s_median": median,
    });
    if a.json {
        println!("{r}");
    } else {
        println!(
            "{} texts, {:.2} MB -> {tokens} tokens; {} thread(s): best {best:.2} MB/s, median {median:.2} MB/s (cache {})",
            texts.len(),
            bytes as f64 / 1e6,
            a.threads,
            if use_cache { "on" } else { "off" }
        );
    }
    Ok(())
}

// ------------------------------------------------------------------ tokenize

/// Bytes of text per parallel batch in `tokenize` (bounds memory).
const TOKENIZE_BATCH_BYTES: usize = 16 << 20;

/// One unit of encoding work: a whole document or a segment of one.
struct Item {
    doc: u64,
    first: bool,
    last: bool,
    text: String,
}

/// Streams the documents of all inputs as items.
struct Docs<'a> {
    inputs: &'a [PathBuf],
    file: usize,
    doc: u64,
    segment_safe: bool,
    segment_bytes: usize,
    jsonl: Option<(std::iter::Enumerate<std::io::Lines<BufReader<File>>>, PathBuf)>,
    plain: Option<(BufReader<File>, Vec<u8>, bool)>,
    bytes_read: u64,
}

impl Docs<'_> {
    fn next_item(&mut self) -> Result<Option<Item>> {
        loop {
            if let Some((lines, path)) = &mut self.jsonl {
                match lines.next() {
                    Some((n, line)) => {
                        let line = line.with_context(|| format!("{}:{}: cannot read (not UTF-8?)", path.display(), n + 1))?;
                        self.bytes_read += line.len() as u64 + 1;
                        if line.trim().is_empty() {
                            continue;
                        }
                        let text = text_field(&line, path, n + 1)?;
                        self.doc += 1;
                        return Ok(Some(Item { doc: self.doc - 1, first: true, last: true, text }));
                    }
                    None => self.jsonl = None,
                }
            }
            if let Some((r, carry, first)) = &mut self.plain {
                let path = &self.inputs[self.file - 1];
                if !self.segment_safe {
                    let mut s = String::new();
                    r.read_to_string(&mut s).with_context(|| format!("cannot read {} as UTF-8 text", path.display()))?;
                    self.bytes_read += s.len() as u64;
                    self.plain = None;
                    self.doc += 1;
                    return Ok(Some(Item { doc: self.doc - 1, first: true, last: true, text: s }));
                }
                // read until a cut point (a space after a non-space) past segment_bytes, or EOF
                let mut eof = false;
                let mut cut = None;
                while cut.is_none() && !eof {
                    let before = carry.len();
                    let mut chunk = Vec::with_capacity(self.segment_bytes);
                    let got = r.by_ref().take(self.segment_bytes as u64).read_to_end(&mut chunk).with_context(|| format!("cannot read {}", path.display()))?;
                    carry.extend_from_slice(&chunk);
                    eof = got == 0;
                    if carry.len() >= self.segment_bytes {
                        cut = (before.max(1)..carry.len()).rev().find(|&i| carry[i] == b' ' && carry[i - 1] != b' ');
                    }
                }
                let (text_bytes, last) = match cut {
                    Some(c) => {
                        let rest = carry.split_off(c);
                        (std::mem::replace(carry, rest), false)
                    }
                    None => (std::mem::take(carry), true),
                };
                self.bytes_read += text_bytes.len() as u64;
                let text = String::from_utf8(text_bytes).map_err(|_| anyhow::anyhow!("{} is not UTF-8 text; HINT: convert it to UTF-8", path.display()))?;
                let item = Item { doc: self.doc, first: *first, last, text };
                *first = false;
                if last {
                    self.plain = None;
                    self.doc += 1;
                }
                return Ok(Some(item));
            }
            let Some(p) = self.inputs.get(self.file) else { return Ok(None) };
            self.file += 1;
            if p.extension().is_some_and(|e| e == "jsonl") {
                self.jsonl = Some((open_lines(p)?.enumerate(), p.clone()));
            } else {
                let f = File::open(p).with_context(|| format!("cannot open {}; HINT: check the path", p.display()))?;
                self.plain = Some((BufReader::with_capacity(1 << 20, f), Vec::new(), true));
            }
        }
    }
}

/// The shards of one split.
struct Split {
    name: &'static str,
    dir: PathBuf,
    max: u64,
    writer: Option<ShardWriter>,
    files: Vec<(String, u64)>,
    tokens: u64,
    docs: u64,
}

impl Split {
    fn push(&mut self, mut ids: &[u32]) -> Result<()> {
        while !ids.is_empty() {
            if self.writer.is_none() {
                let name = format!("{}_{:06}.bin", self.name, self.files.len());
                self.writer = Some(ShardWriter::create(self.dir.join(&name))?);
                self.files.push((name, 0));
            }
            let w = self.writer.as_mut().context("shard writer")?;
            let room = (self.max - w.len()) as usize;
            let n = room.min(ids.len());
            w.push(&ids[..n])?;
            self.tokens += n as u64;
            ids = &ids[n..];
            if w.len() == self.max {
                self.close()?;
            }
        }
        Ok(())
    }
    fn close(&mut self) -> Result<()> {
        if let Some(w) = self.writer.take() {
            let n = w.finish()?;
            if let Some(last) = self.files.last_mut() {
                last.1 = n;
            }
        }
        Ok(())
    }
}

pub fn run_tokenize(a: TokenizeArgs) -> Result<()> {
    let t = load(&a.tokenizer)?;
    if t.vocab_size() > 65536 {
        bail!("{}: vocabulary of {} does not fit llm.c's u16 shards; HINT: use a vocabulary of at most 65536", a.tokenizer.display(), t.vocab_size());
    }
    let (bos, eos) = match a.separator {
        Separator::Both => (t.bos_id(), t.eos_id()),
        Separator::Bos => (t.bos_id(), None),
        Separator::Eos => (None, t.eos_id()),
    };
    if matches!(a.separator, Separator::Both | Separator::Bos) && bos.is_none() {
        bail!("{} has no BOS piece; HINT: use --separator eos", a.tokenizer.display());
    }
    if matches!(a.separator, Separator::Both | Separator::Eos) && eos.is_none() {
        bail!("{} has no EOS piece; HINT: use --separator bos", a.tokenizer.display());
    }
    std::fs::create_dir_all(&a.out_dir).with_context(|| format!("cannot create {}", a.out_dir.display()))?;
    let mut total = 0u64;
    for p in &a.input {
        total += std::fs::metadata(p).with_context(|| format!("cannot read {}; HINT: check the path", p.display()))?.len();
    }
    let config = json!({
        "tokenizer": a.tokenizer, "vocab_size": t.vocab_size(), "inputs": a.input, "out_dir": a.out_dir,
        "val_fraction": a.val_fraction, "shard_tokens": a.shard_tokens, "separator": a.separator,
        "bos_id": bos, "eos_id": eos, "segmented_plain_text": t.segment_safe(),
    });
    eprintln!("[tokenize] {config}");
    if !t.segment_safe() {
        eprintln!("note: this tokenizer's normaliser is not per character; plain-text files are read whole");
    }
    let pool = pool(a.threads)?;
    let mut docs = Docs {
        inputs: &a.input,
        file: 0,
        doc: 0,
        segment_safe: t.segment_safe(),
        segment_bytes: a.segment_bytes as usize,
        jsonl: None,
        plain: None,
        bytes_read: 0,
    };
    let mk = |name| Split { name, dir: a.out_dir.clone(), max: a.shard_tokens, writer: None, files: vec![], tokens: 0, docs: 0 };
    let (mut train, mut val) = (mk("train"), mk("val"));
    let is_val = |doc: u64| ((doc + 1) as f64 * a.val_fraction).floor() > (doc as f64 * a.val_fraction).floor();
    let pb = bar(total, "tokenize");
    let t0 = Instant::now();
    loop {
        let mut batch: Vec<Item> = Vec::new();
        let mut size = 0;
        while size < TOKENIZE_BATCH_BYTES {
            match docs.next_item()? {
                Some(it) => {
                    size += it.text.len();
                    batch.push(it);
                }
                None => break,
            }
        }
        if batch.is_empty() {
            break;
        }
        let encoded: Vec<Vec<u32>> = pool.install(|| {
            batch
                .par_iter()
                .map_init(EncodeCache::new, |cache, it| {
                    let mut out = Vec::with_capacity(it.text.len() / 3 + 2);
                    t.encode_into(&it.text, EncodeOptions::default(), it.first, true, cache, &mut out).map(|_| out)
                })
                .collect::<std::result::Result<_, _>>()
        })?;
        for (it, ids) in batch.iter().zip(encoded) {
            // the split is decided by the document index, so segments of a
            // long document stream straight into it
            let split = if is_val(it.doc) { &mut val } else { &mut train };
            if it.first {
                split.push(bos.as_slice())?;
            }
            split.push(&ids)?;
            if it.last {
                split.push(eos.as_slice())?;
                split.docs += 1;
            }
        }
        pb.set_position(docs.bytes_read);
        pb.set_message(format!("{} tokens", train.tokens + val.tokens));
    }
    train.close()?;
    val.close()?;
    pb.finish_and_clear();
    if a.val_fraction > 0.0 && val.docs == 0 {
        eprintln!(
            "warning: --val-fraction {} gave no validation document out of {}; HINT: give more documents or a larger fraction",
            a.val_fraction, train.docs
        );
    }
    let secs = t0.elapsed().as_secs_f64();
    let summary = json!({
        "config": config,
        "train": {"documents": train.docs, "tokens": train.tokens, "shards": train.files},
        "val": {"documents": val.docs, "tokens": val.tokens, "shards": val.files},
        "input_bytes": docs.bytes_read, "seconds": secs,
    });
    let meta = a.out_dir.join("tokenize.json");
    std::fs::write(&meta, serde_json::to_string_pretty(&summary)?).with_context(|| format!("cannot write {}", meta.display()))?;
    eprintln!(
        "train: {} documents, {} tokens in {} shards; val: {} documents, {} tokens in {} shards; {:.1} MB/s; wrote {}",
        train.docs,
        train.tokens,
        train.files.len(),
        val.docs,
        val.tokens,
        val.files.len(),
        docs.bytes_read as f64 / 1e6 / secs,
        meta.display()
    );
    Ok(())
}
