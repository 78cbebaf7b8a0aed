//! Sampling and generation with the KV cache.
//!
//! Sampling follows transformers' logits processors in their order:
//! temperature, then top-k, then top-p (nucleus: the smallest set of most
//! likely tokens whose probability reaches p, at least one token). Greedy
//! (temperature 0) takes the first index of the maximum, as `torch.argmax`.
//! Every random draw comes from the seeded [`Rng`].
//!
//! Generation: one prefill over the prompt, then one token per step through
//! the cache. Sequences stop at EOS (which is kept in the output, as
//! transformers' `generate` does) unless told not to.
//!
//! Batched generation ([`generate_batch`]): many prompts, K samples each,
//! decoded together in one KV cache with per-row lengths; see its doc.
//!
//! Public items: [`Sampling`], [`argmax`], [`sample`], [`sample_at`],
//! [`logprob`], [`Generator`], [`GenOutput`], [`Finish`], [`Completion`],
//! [`BatchOptions`], [`BatchStats`], [`GenSink`], [`sample_rng`],
//! [`generate_batch`], [`generate_all`], [`DEFAULT_PREFILL_TOKENS`],
//! [`REFILL_DIV`], [`PREFILL_MIN_FILL`], [`MIN_PREFILL_ROWS`].

use crate::acts::{Acts, LogitRows};
use crate::error::{ModelError, Result};
use crate::model::{KvCache, Model};
use llama2_runtime::rng::Rng;
use llama2_runtime::{v, Backend, View, ViewMut};

/// How the next token is chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    /// 0 = greedy
    pub temperature: f32,
    /// keep the k most likely tokens (None = all)
    pub top_k: Option<usize>,
    /// nucleus probability (None or 1.0 = off)
    pub top_p: Option<f32>,
}

impl Sampling {
    pub const GREEDY: Sampling = Sampling { temperature: 0.0, top_k: None, top_p: None };
}

/// Index of the first maximum.
pub fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &xi) in x.iter().enumerate() {
        if xi > x[best] {
            best = i;
        }
    }
    best as u32
}

/// Draws one token from `logits (V)`: greedy at temperature 0 (or top-k 1),
/// else one uniform draw from `rng` (see [`sample_at`]).
pub fn sample(logits: &[f32], s: &Sampling, rng: &mut Rng) -> u32 {
    if s.temperature <= 0.0 || s.top_k == Some(1) || logits.len() <= 1 {
        return argmax(logits);
    }
    sample_at(logits, s, rng.next_f64())
}

/// Candidates to a draw: the most likely first, ties by the lower index
/// (the order of a stable descending sort, as `torch.sort` of transformers'
/// warpers sees it).
fn by_logit(logits: &[f32]) -> impl Fn(&u32, &u32) -> std::cmp::Ordering + '_ {
    move |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]).then(a.cmp(b))
}

/// The token that the uniform draw `u` in [0, 1) picks from `logits (V)`
/// under `s` (temperature > 0): softmax of `logits / T`, restricted to the
/// `top_k` most likely tokens, then to the nucleus (the most likely tokens
/// whose probability, renormalised after top-k, first reaches `top_p`, at
/// least one), renormalised; `u` walks the kept tokens' probabilities in
/// order (most likely first when top-k or top-p is on, index order
/// otherwise). Without top-k and top-p nothing is sorted: O(V); with
/// top-p alone the candidates are ranked a growing prefix at a time, so a
/// peaked distribution costs O(V) too.
pub fn sample_at(logits: &[f32], s: &Sampling, u: f64) -> u32 {
    let v = logits.len();
    let t = s.temperature as f64;
    let top_p = s.top_p.filter(|&p| p < 1.0).map(|p| p as f64);
    let top_k = s.top_k.map(|k| k.max(1)).filter(|&k| k < v);
    let mx = logits.iter().fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m }) as f64;
    let w = |i: u32| ((logits[i as usize] as f64 - mx) / t).exp();
    let pick = |kept: &[u32], ws: &[f64]| -> u32 {
        let z: f64 = ws.iter().sum();
        let target = u * z;
        let mut cum = 0.0;
        for (j, &x) in ws.iter().enumerate() {
            cum += x;
            if target < cum {
                return kept[j];
            }
        }
        kept[kept.len() - 1]
    };
    let ord = by_logit(logits);
    let mut idx: Vec<u32> = (0..v as u32).collect();
    match (top_k, top_p) {
        (None, None) => {
            let ws: Vec<f64> = idx.iter().map(|&i| w(i)).collect();
            pick(&idx, &ws)
        }
        (Some(k), _) => {
            idx.select_nth_unstable_by(k - 1, &ord);
            idx.truncate(k);
            idx.sort_unstable_by(&ord);
            let mut ws: Vec<f64> = idx.iter().map(|&i| w(i)).collect();
            if let Some(p) = top_p {
                let keep = nucleus(&ws, ws.iter().sum::<f64>() * p).unwrap_or(ws.len());
                idx.truncate(keep);
                ws.truncate(keep);
            }
            pick(&idx, &ws)
        }
        (None, Some(p)) => {
            let z: f64 = idx.iter().map(|&i| w(i)).sum();
            // rank a prefix of the candidates; widen it until it holds the nucleus
            let mut n = 64.min(v);
            loop {
                if n < v {
                    idx.select_nth_unstable_by(n - 1, &ord);
                }
                idx[..n].sort_unstable_by(&ord);
                let ws: Vec<f64> = idx[..n].iter().map(|&i| w(i)).collect();
                match nucleus(&ws, z * p) {
                    Some(keep) => return pick(&idx[..keep], &ws[..keep]),
                    None if n == v => return pick(&idx, &ws),
                    None => {}
                }
                n = (n * 4).min(v);
            }
        }
    }
}

/// How many of the weights `ws` (most likely first) the nucleus keeps: the
/// shortest prefix whose sum reaches `mass` (at least one), or None if the
/// whole of `ws` does not.
fn nucleus(ws: &[f64], mass: f64) -> Option<usize> {
    let mut cum = 0.0;
    for (j, &x) in ws.iter().enumerate() {
        cum += x;
        if cum >= mass {
            return Some(j + 1);
        }
    }
    None
}

/// `log softmax(logits)[tok]` (temperature 1, nothing filtered), in f64.
pub fn logprob(logits: &[f32], tok: u32) -> f32 {
    let mx = logits.iter().fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m }) as f64;
    let z: f64 = logits.iter().map(|&x| (x as f64 - mx).exp()).sum();
    (logits[tok as usize] as f64 - mx - z.ln()) as f32
}

/// Generated tokens per sequence (prompt excluded).
#[derive(Clone, Debug, PartialEq)]
pub struct GenOutput {
    pub ids: Vec<Vec<u32>>,
    /// whether each sequence ended with EOS
    pub ended: Vec<bool>,
    /// seconds from the call until the first token's logits were on the
    /// host (the prefill); decode speed is measured after it, as llama2.c's
    /// run.c starts its clock after the first forward
    pub prefill_s: f64,
}

/// Reusable buffers for generating `b` sequences at a time.
///
/// ```
/// use llama2_model::generate::{Generator, Sampling};
/// use llama2_model::Model;
/// use llama2_runtime::{rng::Rng, CpuBackend};
///
/// let be = CpuBackend::new(1)?;
/// let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/gqa");
/// let model = Model::load(&be, &dir)?;
/// // two prompts of different lengths, 5 new tokens each, greedy
/// let prompts = vec![vec![1, 72, 9], vec![1]];
/// let mut gen = Generator::new(&be, &model, 2, 3 + 5)?;
/// let out = gen.generate(&be, &model, &prompts, 5, &Sampling::GREEDY, &mut Rng::new(0), false)?;
/// assert_eq!(out.ids[0].len(), 5);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Generator<B: Backend> {
    pub b: usize,
    cap: usize,
    step: Acts<B>,
    cache: KvCache<B>,
}

impl<B: Backend> Generator<B> {
    /// Buffers for `b` sequences of at most `cap` positions (prompt + new).
    pub fn new(be: &B, model: &Model<B>, b: usize, cap: usize) -> Result<Self> {
        if cap > model.rope_len {
            return Err(ModelError::Invalid(format!("{cap} positions exceed max_position_embeddings {}; HINT: ask for fewer new tokens", model.rope_len)));
        }
        Ok(Generator { b, cap, step: Acts::new(be, &model.cfg, b, 1, false, LogitRows::Last)?, cache: KvCache::new(be, &model.cfg, b, cap)? })
    }

    /// Continues `prompts` (b sequences, of any lengths) by up to `max_new`
    /// tokens each. With `stop_at_eos`, a sequence stops after EOS and the
    /// whole call ends when every sequence has.
    #[allow(clippy::too_many_arguments)]
    pub fn generate(
        &mut self,
        be: &B,
        model: &Model<B>,
        prompts: &[Vec<u32>],
        max_new: usize,
        s: &Sampling,
        rng: &mut Rng,
        stop_at_eos: bool,
    ) -> Result<GenOutput> {
        // one trip to the backend's threads for the whole loop, not one per op
        be.run_batched(|| self.generate_here(be, model, prompts, max_new, s, rng, stop_at_eos))
    }

    #[allow(clippy::too_many_arguments)]
    fn generate_here(
        &mut self,
        be: &B,
        model: &Model<B>,
        prompts: &[Vec<u32>],
        max_new: usize,
        s: &Sampling,
        rng: &mut Rng,
        stop_at_eos: bool,
    ) -> Result<GenOutput> {
        let b = self.b;
        if prompts.len() != b {
            return Err(ModelError::Invalid(format!("generate: {} prompts for a generator of {b}", prompts.len())));
        }
        if let Some(i) = prompts.iter().position(|x| x.is_empty()) {
            return Err(ModelError::Invalid(format!("generate: prompt {i} is empty; HINT: start it with BOS")));
        }
        let p = prompts.iter().map(|x| x.len()).max().unwrap_or(0);
        if p + max_new > self.cap {
            return Err(ModelError::Invalid(format!("generate: {p} prompt + {max_new} new tokens exceed the {} positions allocated", self.cap)));
        }
        let vocab = model.cfg.vocab_size;
        let eos = model.cfg.eos_id;
        let t0 = std::time::Instant::now();
        self.cache.reset();
        // prompts of different lengths: right padding, never attended
        let mut prefill = Acts::new(be, &model.cfg, b, p, false, LogitRows::Last)?;
        let mut flat = vec![0u32; b * p];
        for (r, x) in prompts.iter().enumerate() {
            flat[r * p..r * p + x.len()].copy_from_slice(x);
        }
        let lens: Vec<u32> = prompts.iter().map(|x| x.len() as u32).collect();
        model.forward_ragged(be, &mut prefill, &flat, Some(&lens), Some(&mut self.cache))?;
        let mut logits = vec![0f32; b * vocab];
        be.download(v(&prefill.a.logits), &mut logits)?;
        drop(prefill);
        let prefill_s = t0.elapsed().as_secs_f64();
        let mut out = GenOutput { ids: vec![Vec::with_capacity(max_new); b], ended: vec![false; b], prefill_s };
        for step in 0..max_new {
            let mut next = vec![0u32; b];
            for r in 0..b {
                if out.ended[r] {
                    next[r] = eos;
                    continue;
                }
                let tok = sample(&logits[r * vocab..(r + 1) * vocab], s, rng);
                next[r] = tok;
                out.ids[r].push(tok);
                if stop_at_eos && tok == eos {
                    out.ended[r] = true;
                }
            }
            if (stop_at_eos && out.ended.iter().all(|&e| e)) || step + 1 == max_new {
                break;
            }
            model.forward(be, &mut self.step, &next, Some(&mut self.cache))?;
            be.download(v(&self.step.a.logits), &mut logits)?;
        }
        Ok(out)
    }
}

// ---- batched generation ------------------------------------------------

/// Why a generated answer stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// it sampled EOS (kept as its last id)
    Eos,
    /// it reached its token budget (or the end of the context)
    Length,
}

impl Finish {
    /// "eos" or "length" (the JSON spelling)
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Eos => "eos",
            Finish::Length => "length",
        }
    }
}

/// One generated answer: sample `sample` of prompt `prompt`.
#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    /// index of the prompt in the input
    pub prompt: usize,
    /// index of the sample among the prompt's K
    pub sample: usize,
    /// the generated ids only (EOS included when `finish` is `Eos`)
    pub ids: Vec<u32>,
    pub finish: Finish,
    /// `log p(id)` of every generated id under the model (softmax of the raw
    /// logits: temperature 1, no top-k/top-p), with `BatchOptions::logprobs`
    pub logprobs: Option<Vec<f32>>,
}

/// Settings of [`generate_batch`].
#[derive(Clone, Debug, PartialEq)]
pub struct BatchOptions {
    /// new tokens per answer at most (fewer where the context ends first)
    pub max_new: usize,
    /// answers per prompt (K), each from its own random stream
    pub samples: usize,
    pub sampling: Sampling,
    /// every answer's stream derives from it ([`sample_rng`])
    pub seed: u64,
    /// an answer ends at EOS (else only at its budget)
    pub stop_at_eos: bool,
    /// also return `log p` of every generated id (PPO)
    pub logprobs: bool,
    /// sequences decoded together (rows of the KV cache)
    pub batch: usize,
    /// padded prompt tokens per prefill forward (at least one prompt)
    pub prefill_tokens: usize,
    /// the stream index of each prompt (default: its position in the
    /// input): a caller that generates part of a larger batch (a rank of a
    /// data-parallel job) passes the prompts' positions in the whole batch,
    /// so each answer is the one a single process would draw
    pub streams: Option<Vec<usize>>,
}

impl BatchOptions {
    /// One answer per prompt, stopping at EOS, 16 rows, 4096-token prefills.
    pub fn new(max_new: usize, sampling: Sampling, seed: u64) -> Self {
        BatchOptions {
            max_new,
            samples: 1,
            sampling,
            seed,
            stop_at_eos: true,
            logprobs: false,
            batch: 16,
            prefill_tokens: DEFAULT_PREFILL_TOKENS,
            streams: None,
        }
    }
}

/// Padded tokens per prefill forward by default: 16 prompts of 256 tokens;
/// the activations of such a forward (inference keeps one layer) are a few
/// MB per thousand tokens at the widths we run on the CPU.
pub const DEFAULT_PREFILL_TOKENS: usize = 4096;

/// A prefill chunk takes the next (shorter) prompt only if it is at least
/// 3/4 of the chunk's longest (so padding stays under 1/4 of what is
/// computed), unless the chunk is still under [`MIN_PREFILL_ROWS`] rows.
pub const PREFILL_MIN_FILL: (usize, usize) = (3, 4);

/// A prefill forward of fewer rows than this runs the products below
/// their speed (each weight is read for few rows): such chunks take prompts
/// whatever their padding.
pub const MIN_PREFILL_ROWS: usize = 256;

/// Free rows are refilled when at least 1/REFILL_DIV of the rows are free
/// (or when the rest of the work fits): a prefill of a few prompts at once
/// runs at matrix-product speed, one prompt at a time wastes it, and rows
/// left empty meanwhile only cost a few decode steps at a smaller batch.
pub const REFILL_DIV: usize = 4;

/// What [`generate_batch`] did so far.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BatchStats {
    /// answers to make (prompts x K) and answers made
    pub total: usize,
    pub done: usize,
    /// tokens generated
    pub generated: usize,
    /// prompt tokens prefilled (each prompt once per admission), and the
    /// padded positions those prefills computed
    pub prefill_tokens: usize,
    pub prefill_padded: usize,
    /// decode forwards, and the rows they carried in all
    pub decode_steps: usize,
    pub row_steps: usize,
    /// seconds in prefills (forward, copies into the cache, first tokens)
    /// and in total
    pub prefill_s: f64,
    pub seconds: f64,
}

/// Where [`generate_batch`] delivers answers, as each one ends (in no
/// particular order), and its progress after every step.
pub trait GenSink: Send {
    fn done(&mut self, c: Completion) -> Result<()>;
    fn progress(&mut self, _s: &BatchStats) {}
}

impl<F: FnMut(Completion) -> Result<()> + Send> GenSink for F {
    fn done(&mut self, c: Completion) -> Result<()> {
        self(c)
    }
}

/// The random stream of sample `sample` of prompt `prompt`: each answer
/// draws from its own stream, so it does not depend on which answers share
/// its batch, nor on the batch size.
pub fn sample_rng(seed: u64, prompt: usize, sample: usize) -> Rng {
    Rng::derive(seed, &format!("generate/{prompt}/{sample}"))
}

/// One answer being decoded.
struct Row {
    prompt: usize,
    sample: usize,
    /// tokens it may generate (its budget, cut at the end of the context)
    limit: usize,
    ids: Vec<u32>,
    lps: Vec<f32>,
    rng: Rng,
}

impl Row {
    /// Appends the token drawn from `logits (V)`; returns how the row ended,
    /// if it did.
    fn push(&mut self, logits: &[f32], o: &BatchOptions, eos: u32) -> Option<Finish> {
        let tok = sample(logits, &o.sampling, &mut self.rng);
        self.ids.push(tok);
        if o.logprobs {
            self.lps.push(logprob(logits, tok));
        }
        if o.stop_at_eos && tok == eos {
            Some(Finish::Eos)
        } else if self.ids.len() >= self.limit {
            Some(Finish::Length)
        } else {
            None
        }
    }

    fn finish(self, f: Finish, logprobs: bool) -> Completion {
        Completion { prompt: self.prompt, sample: self.sample, ids: self.ids, finish: f, logprobs: logprobs.then_some(self.lps) }
    }
}

/// Checks prompts and options against the model.
fn check_batch<B: Backend>(model: &Model<B>, prompts: &[Vec<u32>], o: &BatchOptions) -> Result<()> {
    let bad = |m: String| Err(ModelError::Invalid(m));
    if model.cfg.head != crate::config::Head::Lm {
        return bad("generate: this model has a score head, not a language-model head; HINT: generate with a policy (LlamaForCausalLM)".into());
    }
    if o.samples == 0 {
        return bad("generate: 0 samples per prompt; HINT: ask for at least 1".into());
    }
    if let Some(st) = &o.streams {
        if st.len() != prompts.len() {
            return bad(format!("generate: {} stream indices for {} prompts", st.len(), prompts.len()));
        }
    }
    if o.batch == 0 || o.max_new == 0 || o.prefill_tokens == 0 {
        return bad(format!("generate: batch {}, max_new {} and prefill_tokens {} must be >= 1", o.batch, o.max_new, o.prefill_tokens));
    }
    let (v, ctx) = (model.cfg.vocab_size, model.rope_len);
    for (i, p) in prompts.iter().enumerate() {
        if p.is_empty() {
            return bad(format!("generate: prompt {i} is empty; HINT: start it with BOS ({})", model.cfg.bos_id));
        }
        if p.len() >= ctx {
            return bad(format!("generate: prompt {i} has {} tokens, the context is {ctx}: no room for an answer; HINT: shorten the prompt", p.len()));
        }
        if let Some(&x) = p.iter().find(|&&x| x as usize >= v) {
            return bad(format!("generate: prompt {i} holds id {x}, outside the vocabulary of {v}"));
        }
    }
    Ok(())
}

/// Generates `o.samples` answers to every prompt, `o.batch` sequences at a
/// time in one KV cache, and hands each to `sink` as it ends. Returns the
/// totals.
///
/// How: prompts are scheduled longest first (less padding in each
/// prefill; results do not depend on the order). Free rows are filled by
/// prefilling waiting prompts in batches (ragged, right-padded: no pad is
/// attended) into a temporary cache, copying each prompt's keys and values
/// into the rows of its samples (a prompt is prefilled once for all its
/// samples in the batch) and drawing the first token from the prefill's
/// logits. Each decode step is one forward of the live rows (`(rows, C)`
/// products: every weight is read once per step for all rows), each row at
/// its own position (ragged attention over its own cached keys). A row
/// that ends (EOS or budget) leaves at once: the last row moves into its
/// place (its cached keys and values are copied), so ended rows cost
/// nothing. Every answer draws from its own stream ([`sample_rng`]) and
/// the CPU kernels are row-invariant, so an answer is the same for any
/// batch size and any batch position.
pub fn generate_batch<B: Backend>(be: &B, model: &Model<B>, prompts: &[Vec<u32>], o: &BatchOptions, sink: &mut dyn GenSink) -> Result<BatchStats> {
    check_batch(model, prompts, o)?;
    be.run_batched(|| BatchRun::new(be, model, prompts, o)?.run(sink))
}

/// [`generate_batch`] collecting the answers, ordered by (prompt, sample).
pub fn generate_all<B: Backend>(be: &B, model: &Model<B>, prompts: &[Vec<u32>], o: &BatchOptions) -> Result<(Vec<Completion>, BatchStats)> {
    let mut out = Vec::with_capacity(prompts.len() * o.samples);
    let stats = generate_batch(be, model, prompts, o, &mut |c: Completion| {
        out.push(c);
        Ok(())
    })?;
    out.sort_by_key(|c| (c.prompt, c.sample));
    Ok((out, stats))
}

/// The state of one [`generate_batch`] call.
struct BatchRun<'a, B: Backend> {
    be: &'a B,
    model: &'a Model<B>,
    prompts: &'a [Vec<u32>],
    o: &'a BatchOptions,
    /// (prompt, sample) in scheduling order
    items: Vec<(usize, usize)>,
    /// the live rows: row r of `rows` is row r of `cache`
    rows: Vec<Row>,
    cache: KvCache<B>,
    /// one cache row of one layer, for moving rows inside `cache`
    scratch: B::Buf,
    /// decode activations for each number of live rows (made when needed)
    step_acts: Vec<Option<Acts<B>>>,
    logits: Vec<f32>,
    stats: BatchStats,
    t0: std::time::Instant,
}

impl<'a, B: Backend> BatchRun<'a, B> {
    fn new(be: &'a B, model: &'a Model<B>, prompts: &'a [Vec<u32>], o: &'a BatchOptions) -> Result<Self> {
        let mut order: Vec<usize> = (0..prompts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(prompts[i].len()));
        let items: Vec<(usize, usize)> = order.iter().flat_map(|&p| (0..o.samples).map(move |s| (p, s))).collect();
        let longest = prompts.iter().map(|p| p.len()).max().unwrap_or(1);
        // a row holds its prompt and all its tokens but the last (never fed)
        let cap = (longest + o.max_new).min(model.rope_len);
        let slots = o.batch.min(items.len()).max(1);
        let kvd = model.cfg.kv_dim();
        let stats = BatchStats { total: items.len(), ..Default::default() };
        Ok(BatchRun {
            be,
            model,
            prompts,
            o,
            items,
            rows: Vec::with_capacity(slots),
            cache: KvCache::new(be, &model.cfg, slots, cap)?,
            scratch: be.alloc(cap * kvd, llama2_runtime::BufKind::Act)?,
            step_acts: (0..=slots).map(|_| None).collect(),
            logits: Vec::new(),
            stats,
            t0: std::time::Instant::now(),
        })
    }

    fn run(mut self, sink: &mut dyn GenSink) -> Result<BatchStats> {
        let slots = self.cache.b;
        let mut next = 0;
        loop {
            let (free, waiting) = (slots - self.rows.len(), self.items.len() - next);
            if waiting > 0 && free > 0 && (self.rows.is_empty() || free * REFILL_DIV >= slots || waiting <= free) {
                let take = free.min(waiting);
                let batch: Vec<(usize, usize)> = self.items[next..next + take].to_vec();
                next += take;
                self.admit(&batch, sink)?;
                continue;
            }
            if self.rows.is_empty() {
                break;
            }
            self.step(sink)?;
        }
        self.stats.seconds = self.t0.elapsed().as_secs_f64();
        sink.progress(&self.stats);
        Ok(self.stats)
    }

    /// Delivers an ended answer.
    fn emit(&mut self, row: Row, f: Finish, sink: &mut dyn GenSink) -> Result<()> {
        self.stats.done += 1;
        sink.done(row.finish(f, self.o.logprobs))
    }

    /// Prefills the prompts of `batch` (in chunks of at most
    /// `o.prefill_tokens` padded tokens), copies their keys and values into
    /// free rows, one row per (prompt, sample), and draws each row's first
    /// token.
    fn admit(&mut self, batch: &[(usize, usize)], sink: &mut dyn GenSink) -> Result<()> {
        let t0 = std::time::Instant::now();
        // distinct prompts, with their samples, in order
        let mut groups: Vec<(usize, Vec<usize>)> = Vec::new();
        for &(p, s) in batch {
            match groups.last_mut() {
                Some(g) if g.0 == p => g.1.push(s),
                _ => groups.push((p, vec![s])),
            }
        }
        let mut start = 0;
        while start < groups.len() {
            // longest first: the chunk's first prompt is its longest, and the
            // chunk ends where padding would waste too much (see the constants)
            let len = |i: usize| self.prompts[groups[i].0].len();
            let t = len(start);
            let mut n = 1;
            while start + n < groups.len()
                && (n + 1) * t <= self.o.prefill_tokens
                && (len(start + n) * PREFILL_MIN_FILL.1 >= t * PREFILL_MIN_FILL.0 || n * t < MIN_PREFILL_ROWS)
            {
                n += 1;
            }
            self.prefill(&groups[start..start + n], sink)?;
            start += n;
        }
        self.stats.prefill_s += t0.elapsed().as_secs_f64();
        Ok(())
    }

    fn prefill(&mut self, groups: &[(usize, Vec<usize>)], sink: &mut dyn GenSink) -> Result<()> {
        let (be, model) = (self.be, self.model);
        let cfg = &model.cfg;
        let (vocab, eos, nl, kvd) = (cfg.vocab_size, cfg.eos_id, cfg.n_layers, cfg.kv_dim());
        let b = groups.len();
        let lens: Vec<u32> = groups.iter().map(|g| self.prompts[g.0].len() as u32).collect();
        let t = lens.iter().copied().max().unwrap_or(1) as usize;
        let mut flat = vec![0u32; b * t];
        for (j, g) in groups.iter().enumerate() {
            let p = &self.prompts[g.0];
            flat[j * t..j * t + p.len()].copy_from_slice(p);
        }
        let mut tmp = KvCache::new(be, cfg, b, t)?;
        let mut acts = Acts::new(be, cfg, b, t, false, LogitRows::Last)?;
        model.trunk(be, &mut acts, &flat, Some(&lens), Some(&mut tmp))?;
        model.lm_head(be, &mut acts, Some(&lens))?;
        self.logits.resize(b * vocab, 0.0);
        be.download(v(&acts.a.logits), &mut self.logits)?;
        drop(acts);
        self.stats.prefill_tokens += lens.iter().map(|&x| x as usize).sum::<usize>();
        self.stats.prefill_padded += b * t;
        for (j, (p, samples)) in groups.iter().enumerate() {
            let len = lens[j] as usize;
            for &s in samples {
                let slot = self.rows.len();
                for l in 0..nl {
                    let (src, dst) = ((l * b + j) * t * kvd, (l * self.cache.b + slot) * self.cache.cap * kvd);
                    be.copy(ViewMut { buf: &mut self.cache.k, off: dst, len: len * kvd }, View { buf: &tmp.k, off: src, len: len * kvd })?;
                    be.copy(ViewMut { buf: &mut self.cache.v, off: dst, len: len * kvd }, View { buf: &tmp.v, off: src, len: len * kvd })?;
                }
                self.cache.lens[slot] = len;
                let limit = self.o.max_new.min(model.rope_len - len);
                let mut row = Row {
                    prompt: *p,
                    sample: s,
                    limit,
                    ids: Vec::with_capacity(limit),
                    lps: Vec::new(),
                    rng: sample_rng(self.o.seed, self.o.streams.as_ref().map_or(*p, |x| x[*p]), s),
                };
                self.stats.generated += 1;
                match row.push(&self.logits[j * vocab..(j + 1) * vocab], self.o, eos) {
                    Some(f) => self.emit(row, f, sink)?,
                    None => self.rows.push(row),
                }
            }
        }
        Ok(())
    }

    /// One decode step of every live row; ended rows leave.
    fn step(&mut self, sink: &mut dyn GenSink) -> Result<()> {
        let (be, model) = (self.be, self.model);
        let cfg = &model.cfg;
        let (vocab, eos) = (cfg.vocab_size, cfg.eos_id);
        let n = self.rows.len();
        let acts = match &mut self.step_acts[n] {
            Some(a) => a,
            slot => slot.insert(Acts::new(be, cfg, n, 1, false, LogitRows::Last)?),
        };
        let tokens: Vec<u32> = self.rows.iter().map(|r| r.ids[r.ids.len() - 1]).collect();
        model.trunk(be, acts, &tokens, None, Some(&mut self.cache))?;
        model.lm_head(be, acts, None)?;
        self.logits.resize(n * vocab, 0.0);
        be.download(v(&acts.a.logits), &mut self.logits)?;
        self.stats.decode_steps += 1;
        self.stats.row_steps += n;
        self.stats.generated += n;
        let o = self.o;
        let ended: Vec<Option<Finish>> = {
            use rayon::prelude::*;
            self.rows.par_iter_mut().zip(self.logits.par_chunks(vocab)).map(|(r, lg)| r.push(lg, o, eos)).collect()
        };
        // highest index first: the last row is never one that ended
        for i in (0..n).rev() {
            if let Some(f) = ended[i] {
                let last = self.rows.len() - 1;
                if i != last {
                    self.move_row(last, i)?;
                }
                let row = self.rows.swap_remove(i);
                self.emit(row, f, sink)?;
            }
        }
        self.stats.seconds = self.t0.elapsed().as_secs_f64();
        sink.progress(&self.stats);
        Ok(())
    }

    /// Moves cache row `from` (its filled positions, every layer, keys and
    /// values) into row `to`.
    fn move_row(&mut self, from: usize, to: usize) -> Result<()> {
        let be = self.be;
        let (nl, kvd) = (self.model.cfg.n_layers, self.model.cfg.kv_dim());
        let (b, cap) = (self.cache.b, self.cache.cap);
        let len = self.cache.lens[from] * kvd;
        for l in 0..nl {
            let (src, dst) = ((l * b + from) * cap * kvd, (l * b + to) * cap * kvd);
            for buf in [&mut self.cache.k, &mut self.cache.v] {
                be.copy(ViewMut { buf: &mut self.scratch, off: 0, len }, View { buf, off: src, len })?;
                be.copy(ViewMut { buf, off: dst, len }, View { buf: &self.scratch, off: 0, len })?;
            }
        }
        self.cache.lens[to] = self.cache.lens[from];
        self.cache.lens[from] = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(temperature: f32, top_k: Option<usize>, top_p: Option<f32>) -> Sampling {
        Sampling { temperature, top_k, top_p }
    }

    /// Probabilities by hand: logits (ln 4, ln 2, 0, 0) at temperature 1 are
    /// (1/2, 1/4, 1/8, 1/8); the draw `u` walks them in index order, or most
    /// likely first (ties by index) once top-k or top-p is on.
    #[test]
    fn draws_by_hand() {
        let l = [4f32.ln(), 2f32.ln(), 0.0, 0.0];
        let at = |sm: Sampling, u: f64| sample_at(&l, &sm, u);
        let plain = s(1.0, None, None);
        assert_eq!([0.49, 0.51, 0.80, 0.90].map(|u| at(plain, u)), [0, 1, 2, 3]);
        // top-k 2: (2/3, 1/3)
        assert_eq!([0.66, 0.67].map(|u| at(s(1.0, Some(2), None), u)), [0, 1]);
        // top-p 0.7: cumulative 1/2, 3/4 >= 0.7: the same two tokens
        assert_eq!([0.66, 0.67].map(|u| at(s(1.0, None, Some(0.7)), u)), [0, 1]);
        // top-p 0.8: 1/2, 3/4, 7/8 >= 0.8: (4, 2, 1)/7 = 0.571, 0.857
        assert_eq!([0.57, 0.58, 0.85, 0.86, 0.99].map(|u| at(s(1.0, None, Some(0.8)), u)), [0, 1, 1, 2, 2]);
        // top-p 0.5: the first token alone reaches it
        assert_eq!(at(s(1.0, None, Some(0.5)), 0.99), 0);
        // top-k 3 then top-p 0.9 over the renormalised (4, 2, 1)/7: 0.571,
        // 0.857 < 0.9 <= 1: all three
        assert_eq!(at(s(1.0, Some(3), Some(0.9)), 0.99), 2);
        // temperature 2: weights (2, sqrt 2, 1, 1), p0 = 2 / 5.414 = 0.3694
        assert_eq!([0.36, 0.38].map(|u| at(s(2.0, None, None), u)), [0, 1]);
        // greedy: temperature 0 or top-k 1, the first maximum
        let mut rng = Rng::new(1);
        assert_eq!(sample(&[0.0, 1.0, 1.0], &Sampling::GREEDY, &mut rng), 1);
        assert_eq!(sample(&[0.0, 1.0, 1.0], &s(1.0, Some(1), None), &mut rng), 1);
        // a tie inside top-k: index order
        assert_eq!([0.49, 0.51].map(|u| sample_at(&[0.0, 1.0, 1.0], &s(1.0, Some(2), None), u)), [1, 2]);
        assert!((logprob(&l, 0) - 0.5f32.ln()).abs() < 1e-6 && (logprob(&l, 3) - 0.125f32.ln()).abs() < 1e-6);
    }

    /// A flat distribution over 1000 tokens with top-p 0.9 needs 900 of
    /// them: the ranked prefix grows from 64 to 256 to all 1000.
    #[test]
    fn nucleus_wider_than_the_first_prefix() {
        let l = vec![0f32; 1000];
        let sm = s(1.0, None, Some(0.9));
        assert_eq!([0.0, 0.5, 0.9999].map(|u| sample_at(&l, &sm, u)), [0, 450, 899]);
    }
}
