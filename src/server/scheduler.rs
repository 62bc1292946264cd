//! The engine thread: owns the model and a KV cache of `parallel` sequence
//! slots, admits queued requests into free slots, and advances every active
//! sequence by one token per decode step, all of them in one batch.
//!
//! A step of the loop: take new requests; drop those whose client has gone;
//! fill free slots; prefill one chunk of the oldest slot still prefilling (so a
//! long prompt does not stall the others for long); one decode step for every
//! slot that has a token to feed.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use super::metrics::Metrics;
use crate::engine::constrain::Constraint;
use crate::engine::{Engine, Sampler, SamplerConfig};
use crate::tokenizer::{StreamDecoder, Tokenizer};

/// Why a generation ended, as OpenAI names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// End-of-generation token or a stop string.
    Stop,
    /// `max_tokens` reached or the context is full.
    Length,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

/// A generated token's log-probability under the model (the log-softmax of
/// its logits, before sampling settings), with the most likely alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: Alternative,
    /// The `k` most likely tokens, most likely first.
    pub top: Vec<Alternative>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Alternative {
    pub id: u32,
    /// The token's bytes (control tokens: their text).
    pub bytes: Vec<u8>,
    pub logprob: f32,
}

impl Alternative {
    /// The token's text (bytes that are not whole UTF-8 shown as U+FFFD).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// `token`'s log-probability in `logits`, and the `k` most likely tokens'.
pub fn token_logprob(logits: &[f32], token: u32, k: usize, tok: &Tokenizer) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    let lse = max + sum.ln() as f32;
    let alt = |id: u32| {
        let mut bytes = Vec::new();
        let _ = tok.token_bytes(id, true, &mut bytes);
        Alternative {
            id,
            bytes,
            logprob: logits[id as usize] - lse,
        }
    };
    // The k largest by one pass keeping a sorted list (k ≤ 20).
    let mut best: Vec<u32> = Vec::with_capacity(k + 1);
    if k > 0 {
        for (i, &l) in logits.iter().enumerate() {
            if best.len() == k && l <= logits[best[k - 1] as usize] {
                continue;
            }
            let at = best.partition_point(|&b| logits[b as usize] >= l);
            best.insert(at, i as u32);
            best.truncate(k);
        }
    }
    TokenLogprob {
        token: alt(token),
        top: best.into_iter().map(alt).collect(),
    }
}

/// What the engine tells a request's handler.
#[derive(Debug)]
pub enum Event {
    /// More generated text (complete UTF-8, stop strings withheld), and the
    /// log-probabilities of the tokens generated since the last text, when
    /// the request asked for them.
    Text(String, Vec<TokenLogprob>),
    Done {
        finish: Finish,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    /// The engine failed on this request (a backend error).
    Failed(String),
}

/// A request the HTTP layer has validated and tokenized.
pub struct Job {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplerConfig,
    pub stop: Vec<String>,
    /// Log-probabilities with this many alternatives per token.
    pub logprobs: Option<usize>,
    /// Choices to generate (`n`): one prefill, then as many sequences, each
    /// with its own sampler (seed + choice).
    pub n: usize,
    /// Events, tagged with the choice they belong to.
    pub events: UnboundedSender<(usize, Event)>,
    /// The grammar the output is held to (`response_format`, `grammar`,
    /// forced tool calls), in its initial state.
    pub constraint: Option<Constraint>,
    /// A grammar that holds the output from the sampling of a token on,
    /// until it completes (`strict` tool calls under `tool_choice` `auto`).
    pub lazy: Option<(u32, Constraint)>,
    /// Holds the request's place in the admission count until dropped (the
    /// first choice's slot holds it).
    pub ticket: Option<Ticket>,
}

impl Job {
    /// The job as its choice `choice` (> 0) runs it: no admission ticket.
    fn follower(&self) -> Job {
        Job {
            prompt: self.prompt.clone(),
            max_tokens: self.max_tokens,
            sampling: self.sampling.clone(),
            stop: self.stop.clone(),
            logprobs: self.logprobs,
            n: self.n,
            events: self.events.clone(),
            constraint: self.constraint.as_ref().map(Constraint::fork),
            lazy: self.lazy.as_ref().map(|(t, c)| (*t, c.fork())),
            ticket: None,
        }
    }
}

/// Bounds the requests in the system (running + queued): beyond the bound the
/// HTTP layer answers 429 at once instead of queueing without limit.
pub struct Admission {
    limit: usize,
    in_system: AtomicUsize,
}

/// One admitted request; dropping it frees the place.
pub struct Ticket(Arc<Admission>);

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.in_system.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Admission {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Admission {
            limit,
            in_system: AtomicUsize::new(0),
        })
    }

    /// A place for one more request, or `None` when the queue is full.
    pub fn try_admit(self: &Arc<Self>) -> Option<Ticket> {
        self.in_system
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .ok()
            .map(|_| Ticket(self.clone()))
    }

    pub fn in_system(&self) -> usize {
        self.in_system.load(Ordering::Acquire)
    }
}

pub struct EngineConfig {
    pub parallel: usize,
    pub n_ctx: usize,
    /// Prompt tokens prefilled per loop step.
    pub prefill_chunk: usize,
}

struct Slot<'t> {
    job: Job,
    /// Which of the request's choices this sequence is.
    choice: usize,
    /// The slot whose prefill this choice waits for (it then copies that
    /// sequence's cache instead of computing its own).
    follows: Option<usize>,
    sampler: Sampler,
    decoder: StreamDecoder<'t>,
    /// Prompt tokens already in the cache.
    prefilled: usize,
    generated: usize,
    /// The token to feed at the next decode step.
    next: Option<u32>,
    /// Text generated so far and how much of it was sent.
    text: String,
    sent: usize,
    /// Log-probabilities of tokens whose text is not sent yet.
    logprobs: Vec<TokenLogprob>,
    started: Instant,
    /// The job's lazy grammar, from its trigger token until it completes.
    in_grammar: Option<Constraint>,
}

/// What became of a slot after a token.
enum Outcome {
    Continue,
    Finished,
    ClientGone,
}

impl<'t> Slot<'t> {
    /// Choice `choice` of `job`; its sampler's seed is the request's plus
    /// the choice, so that choices differ where sampling is random.
    fn new(job: Job, choice: usize, follows: Option<usize>, tok: &'t Tokenizer) -> Self {
        let mut sampling = job.sampling.clone();
        sampling.seed = sampling.seed.wrapping_add(choice as u64);
        let mut sampler = Sampler::new(sampling);
        sampler.observe(&job.prompt);
        Slot {
            job,
            choice,
            follows,
            sampler,
            decoder: tok.stream_decoder(false),
            prefilled: 0,
            generated: 0,
            next: None,
            text: String::new(),
            sent: 0,
            logprobs: Vec::new(),
            started: Instant::now(),
            in_grammar: None,
        }
    }

    fn send(&self, e: Event) -> bool {
        self.job.events.send((self.choice, e)).is_ok()
    }

    /// Send whatever text can no longer turn out to be the start of a stop
    /// string; with `all`, send everything.
    fn flush(&mut self, all: bool) -> bool {
        let mut end = self.text.len();
        if !all {
            // Hold back the longest tail that is a proper prefix of a stop string.
            for s in &self.job.stop {
                for k in (1..s.len()).rev() {
                    if s.is_char_boundary(k) && self.text.ends_with(&s[..k]) {
                        end = end.min(self.text.len() - k);
                        break;
                    }
                }
            }
        }
        if end > self.sent || (all && !self.logprobs.is_empty()) {
            let piece = self.text[self.sent..end.max(self.sent)].to_string();
            self.sent = end.max(self.sent);
            let lp = std::mem::take(&mut self.logprobs);
            return self.send(Event::Text(piece, lp));
        }
        true
    }

    /// The next token from a row of logits: the grammar's forbidden tokens
    /// masked (where the request has one), sampled, its log-probability
    /// noted, the grammar advanced. Errs where the grammar cannot go on.
    fn choose(&mut self, logits: &[f32], tok: &Tokenizer) -> Result<u32, String> {
        let lazy = self.job.constraint.is_none();
        let c = match (self.job.constraint.as_mut(), self.in_grammar.as_mut()) {
            (Some(c), _) | (None, Some(c)) => c,
            (None, None) => {
                let token = self.sampler.sample(logits);
                self.note_logprob(logits, token, tok);
                if let Some((trigger, lazy)) = &self.job.lazy
                    && token == *trigger
                {
                    self.in_grammar = Some(lazy.fork());
                }
                return Ok(token);
            }
        };
        let mut row = logits.to_vec();
        c.mask(&mut row)?;
        if row.iter().all(|l| *l == f32::NEG_INFINITY) {
            return Err("the output grammar allows no token here".into());
        }
        let token = self.sampler.sample(&row);
        c.accept(token)?;
        if lazy && c.is_stopped() {
            // The lazy grammar's part is written: free text again.
            self.in_grammar = None;
        }
        self.note_logprob(&row, token, tok);
        Ok(token)
    }

    /// Note the chosen token's log-probability, where the request asked.
    fn note_logprob(&mut self, logits: &[f32], token: u32, tok: &Tokenizer) {
        if let Some(k) = self.job.logprobs
            && !tok.is_eog(token)
        {
            self.logprobs.push(token_logprob(logits, token, k, tok));
        }
    }

    fn finish(&mut self, finish: Finish) -> Outcome {
        let rest = self.decoder.finish();
        self.text.push_str(&rest);
        if !self.flush(true) {
            return Outcome::ClientGone;
        }
        let done = Event::Done {
            finish,
            prompt_tokens: self.job.prompt.len(),
            completion_tokens: self.generated,
        };
        if self.send(done) {
            Outcome::Finished
        } else {
            Outcome::ClientGone
        }
    }

    /// Take a sampled token: emit its text, check the stop conditions.
    fn accept(&mut self, token: u32, tok: &Tokenizer, room: bool) -> Outcome {
        self.generated += 1;
        if tok.is_eog(token) {
            return self.finish(Finish::Stop);
        }
        let piece = self.decoder.push(token).unwrap_or_default();
        // A stop string can only end in the new piece, so it starts at most
        // its length before the text not yet searched.
        let longest = self.job.stop.iter().map(|s| s.len()).max().unwrap_or(0);
        let mut from = self.text.len().saturating_sub(longest);
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        self.text.push_str(&piece);
        let found = self
            .job
            .stop
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i))
            .min();
        if let Some(at) = found {
            self.text.truncate(at);
            self.decoder.finish();
            if !self.flush(true) {
                return Outcome::ClientGone;
            }
            return self.finish(Finish::Stop);
        }
        if self
            .job
            .constraint
            .as_ref()
            .is_some_and(Constraint::is_stopped)
        {
            // The grammar is complete: nothing may follow.
            return self.finish(Finish::Stop);
        }
        if self.generated >= self.job.max_tokens || !room {
            return self.finish(Finish::Length);
        }
        if !self.flush(false) {
            return Outcome::ClientGone;
        }
        self.next = Some(token);
        Outcome::Continue
    }
}

/// Run the scheduler over `session` (one sequence slot per parallel request)
/// until every sender of `jobs` is gone. Must run where the backend lives
/// (inside `Backend::run` for the CPU backend).
/// `f`, with a panic turned into an error: a bug met by one request fails
/// that request (and the ones sharing its decode step) with a message, and
/// the server goes on serving the others.
fn contained<T>(
    f: impl FnOnce() -> Result<T, crate::backend::BackendError>,
) -> Result<T, crate::backend::BackendError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        Err(crate::backend::BackendError::Invalid(format!(
            "internal error in the engine ({what}); this request failed, the server goes on"
        )))
    })
}

/// The engine's layer placement and last timeline, for `/v1/ferry/status`.
fn publish_status(session: &mut dyn Engine, metrics: &Metrics) {
    if let Some(s) = session.status()
        && let Ok(mut status) = metrics.status.lock()
    {
        *status = s;
    }
}

pub fn run_engine(
    session: &mut dyn Engine,
    tok: &Tokenizer,
    cfg: &EngineConfig,
    jobs: Receiver<Job>,
    metrics: &Metrics,
) -> Result<(), crate::backend::BackendError> {
    if session.n_seq() < cfg.parallel || session.n_ctx() < cfg.n_ctx {
        return Err(crate::backend::BackendError::Invalid(format!(
            "the session holds {} sequences of {} tokens; the server needs {} of {}",
            session.n_seq(),
            session.n_ctx(),
            cfg.parallel,
            cfg.n_ctx
        )));
    }
    let mut slots: Vec<Option<Slot>> = (0..cfg.parallel).map(|_| None).collect();
    let mut waiting: VecDeque<Job> = VecDeque::new();
    publish_status(session, metrics);
    let publish = |slots: &[Option<Slot>], waiting: &VecDeque<Job>| {
        let active = slots.iter().filter(|s| s.is_some()).count();
        metrics
            .active_sequences
            .store(active as u64, Ordering::Relaxed);
        metrics
            .queue_length
            .store(waiting.len() as u64, Ordering::Relaxed);
    };
    // A request counts once, by its first choice.
    let end = |slot: &mut Option<Slot>, outcome: Outcome| {
        let first = slot.as_ref().is_some_and(|s| s.choice == 0);
        match outcome {
            Outcome::Continue => {}
            Outcome::Finished => {
                Metrics::add(&metrics.requests_ok, first as u64);
                *slot = None;
            }
            Outcome::ClientGone => {
                Metrics::add(&metrics.requests_cancelled, first as u64);
                *slot = None;
            }
        }
    };
    // The slot's next token from its row of logits, taken (text, stop
    // checks); a grammar that cannot go on fails the request.
    let take_token = |slot: &mut Option<Slot>, row: &[f32], room: bool| {
        let s = slot.as_mut().expect("a running slot");
        match s.choose(row, tok) {
            Ok(token) => {
                Metrics::add(&metrics.generated_tokens, 1);
                let outcome = s.accept(token, tok, room);
                end(slot, outcome);
            }
            Err(e) => {
                let _ = s.send(Event::Failed(e));
                *slot = None;
            }
        }
    };
    loop {
        // 1. New requests; block only when there is nothing else to do.
        if waiting.is_empty() && slots.iter().all(|s| s.is_none()) {
            publish(&slots, &waiting);
            match jobs.recv() {
                Ok(job) => waiting.push_back(job),
                Err(_) => return Ok(()),
            }
        }
        loop {
            match jobs.try_recv() {
                Ok(job) => waiting.push_back(job),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    if waiting.is_empty() && slots.iter().all(|s| s.is_none()) {
                        return Ok(());
                    }
                    break;
                }
            }
        }
        // 2. Clients that went away free their place at once.
        let before = waiting.len();
        waiting.retain(|j| !j.events.is_closed());
        Metrics::add(&metrics.requests_cancelled, (before - waiting.len()) as u64);
        for slot in slots.iter_mut() {
            if slot.as_ref().is_some_and(|s| s.job.events.is_closed()) {
                end(slot, Outcome::ClientGone);
            }
        }
        // 3. Free slots take the oldest waiting requests, a request of n
        //    choices n slots at once (its first prefills, the others follow).
        loop {
            let free: Vec<usize> = (0..slots.len()).filter(|&i| slots[i].is_none()).collect();
            let Some(job) = waiting.front() else { break };
            if job.n > free.len() {
                break;
            }
            let job = waiting.pop_front().expect("front exists");
            let primary = free[0];
            for (choice, &i) in free.iter().enumerate().take(job.n).skip(1) {
                session.reset(i);
                slots[i] = Some(Slot::new(job.follower(), choice, Some(primary), tok));
            }
            session.reset(primary);
            slots[primary] = Some(Slot::new(job, 0, None, tok));
        }
        publish(&slots, &waiting);
        // 4. One prefill chunk, for the slot that has waited longest (choices
        //    that follow another's prefill wait for it).
        let prefilling = slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (i, s)))
            .filter(|(_, s)| s.follows.is_none() && s.prefilled < s.job.prompt.len())
            .min_by_key(|(_, s)| s.started)
            .map(|(i, _)| i);
        if let Some(i) = prefilling {
            let slot = slots[i].as_mut().expect("chosen above");
            let len = slot.job.prompt.len();
            let chunk = slot.prefilled..(slot.prefilled + cfg.prefill_chunk).min(len);
            let t0 = Instant::now();
            let result = contained(|| session.prefill(i, &slot.job.prompt[chunk.clone()]));
            Metrics::add(&metrics.prefill_micros, t0.elapsed().as_micros() as u64);
            // A prefill moves layers (parking, handover) and leaves a timeline.
            publish_status(session, metrics);
            Metrics::add(&metrics.prompt_tokens, chunk.len() as u64);
            let followers: Vec<usize> = (0..slots.len())
                .filter(|&j| slots[j].as_ref().is_some_and(|s| s.follows == Some(i)))
                .collect();
            match result {
                Err(e) => {
                    // The request failed: every choice of it ends.
                    if let Some(slot) = &slots[i] {
                        let _ = slot.send(Event::Failed(e.to_string()));
                    }
                    Metrics::add(&metrics.requests_failed, 1);
                    slots[i] = None;
                    for j in followers {
                        slots[j] = None;
                    }
                }
                Ok(logits) => {
                    let slot = slots[i].as_mut().expect("chosen above");
                    slot.prefilled = chunk.end;
                    if chunk.end == len {
                        // The other choices copy this sequence's cache and
                        // sample their first token from the same logits.
                        let mut firsts = vec![i];
                        for j in followers {
                            let follower = slots[j].as_mut().expect("listed above");
                            follower.follows = None;
                            match contained(|| session.fork(i, j)) {
                                Ok(true) => {
                                    follower.prefilled = len;
                                    firsts.push(j);
                                }
                                // This engine cannot copy: the choice
                                // prefills its own sequence.
                                Ok(false) => {}
                                Err(e) => {
                                    let _ = follower.send(Event::Failed(e.to_string()));
                                    slots[j] = None;
                                }
                            }
                        }
                        for k in firsts {
                            let room = session.len(k) < cfg.n_ctx;
                            take_token(&mut slots[k], &logits, room);
                        }
                    }
                }
            }
        }
        // 5. One decode step for every sequence with a token to feed.
        let ready: Vec<usize> = slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.as_ref().is_some_and(|s| s.next.is_some()))
            .map(|(i, _)| i)
            .collect();
        if ready.is_empty() {
            continue;
        }
        let tokens: Vec<u32> = ready
            .iter()
            .map(|&i| {
                slots[i]
                    .as_mut()
                    .and_then(|s| s.next.take())
                    .expect("ready")
            })
            .collect();
        let t0 = Instant::now();
        // The grammars' masks for this step are computed on another thread
        // while the model computes the logits they apply to.
        let mut grammars: Vec<&mut Constraint> = slots
            .iter_mut()
            .filter_map(|s| s.as_mut().and_then(|s| s.job.constraint.as_mut()))
            .collect();
        let result = if grammars.is_empty() {
            contained(|| session.decode(&ready, &tokens))
        } else {
            std::thread::scope(|scope| {
                scope.spawn(|| grammars.iter_mut().for_each(|c| c.prepare()));
                contained(|| session.decode(&ready, &tokens))
            })
        };
        Metrics::add(&metrics.decode_micros, t0.elapsed().as_micros() as u64);
        Metrics::add(&metrics.decode_steps, 1);
        Metrics::add(&metrics.decode_sequences, ready.len() as u64);
        let logits = match result {
            Ok(l) => l,
            Err(e) => {
                for &i in &ready {
                    if let Some(s) = &slots[i] {
                        let _ = s.send(Event::Failed(e.to_string()));
                    }
                    Metrics::add(&metrics.requests_failed, 1);
                    slots[i] = None;
                }
                continue;
            }
        };
        let vocab = logits.len() / ready.len();
        for (k, &i) in ready.iter().enumerate() {
            let room = session.len(i) < cfg.n_ctx;
            take_token(&mut slots[i], &logits[k * vocab..(k + 1) * vocab], room);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An engine that panics on one prompt token and answers others.
    struct Flaky {
        lens: Vec<usize>,
    }

    impl Engine for Flaky {
        fn n_ctx(&self) -> usize {
            64
        }
        fn n_seq(&self) -> usize {
            self.lens.len()
        }
        fn len(&self, seq: usize) -> usize {
            self.lens[seq]
        }
        fn reset(&mut self, seq: usize) {
            self.lens[seq] = 0;
        }
        fn prefill(
            &mut self,
            seq: usize,
            tokens: &[u32],
        ) -> Result<Vec<f32>, crate::backend::BackendError> {
            assert!(!tokens.contains(&666), "a bug this prompt meets");
            self.lens[seq] += tokens.len();
            Ok(vec![0.0, 1.0])
        }
        fn decode(
            &mut self,
            seqs: &[usize],
            _tokens: &[u32],
        ) -> Result<Vec<f32>, crate::backend::BackendError> {
            for &s in seqs {
                self.lens[s] += 1;
            }
            Ok(seqs.iter().flat_map(|_| [0.0, 1.0]).collect())
        }
    }

    /// A 300-token synthetic vocabulary (written to a file and read back).
    fn synthetic_tokenizer(tag: &str) -> Tokenizer {
        let path = std::env::temp_dir().join(format!("ferry-{tag}-{}.gguf", std::process::id()));
        let mut meta = crate::tokenizer::synthetic::metadata(300).unwrap();
        meta.push((
            "general.architecture".into(),
            crate::gguf::Value::String("llama".into()),
        ));
        crate::gguf::write_gguf(&path, &meta, &[]).unwrap();
        let tok = crate::tokenizer::Tokenizer::from_gguf(&crate::gguf::Gguf::open(&path).unwrap())
            .unwrap();
        std::fs::remove_file(&path).ok();
        tok
    }

    /// A lazy grammar (strict tools under `tool_choice` `auto`) holds the
    /// output from its trigger token until it completes, then lets go.
    #[test]
    fn a_lazy_grammar_holds_the_output_from_its_trigger_to_its_end() {
        let tok = std::sync::Arc::new(synthetic_tokenizer("lazy"));
        let grammars = crate::engine::constrain::Grammars::new(tok.clone()).unwrap();
        let body = grammars
            .constraint(&crate::engine::constrain::Spec::Lark("start: \"ab\""))
            .unwrap();
        let (events, _reply) = tokio::sync::mpsc::unbounded_channel();
        let job = Job {
            prompt: vec![1],
            max_tokens: 8,
            sampling: SamplerConfig::greedy(),
            stop: vec![],
            logprobs: None,
            n: 1,
            events,
            constraint: None,
            lazy: Some((b'<' as u32, body)),
            ticket: None,
        };
        let mut slot = Slot::new(job, 0, None, &tok);
        // Logits that favour one token above all others.
        let favour = |id: u8| -> Vec<f32> {
            (0..300)
                .map(|i| if i == id as usize { 10.0 } else { 0.0 })
                .collect()
        };
        // Free text: the model's choice.
        assert_eq!(slot.choose(&favour(b'z'), &tok).unwrap(), b'z' as u32);
        // The trigger: chosen freely, then the grammar holds the output.
        assert_eq!(slot.choose(&favour(b'<'), &tok).unwrap(), b'<' as u32);
        let mut held = String::new();
        while slot.in_grammar.is_some() {
            let t = slot.choose(&favour(b'z'), &tok).unwrap();
            held.push_str(&tok.decode(&[t], false).unwrap());
            assert!(held.len() <= 2, "{held:?}");
        }
        assert_eq!(held, "ab");
        // Complete: free again.
        assert_eq!(slot.choose(&favour(b'z'), &tok).unwrap(), b'z' as u32);
    }

    /// Log-probabilities are the log-softmax of the logits; the alternatives
    /// are the k most likely, most likely first.
    #[test]
    fn logprobs_are_the_log_softmax_with_the_most_likely_alternatives() {
        let tok = synthetic_tokenizer("lp");
        let logits: Vec<f32> = (0..300).map(|i| ((i * 37) % 101) as f32 / 10.0).collect();
        let lp = token_logprob(&logits, 5, 4, &tok);
        let total: f64 = logits
            .iter()
            .map(|&l| ((l - logits[5] + lp.token.logprob) as f64).exp())
            .sum();
        assert!((total - 1.0).abs() < 1e-4, "{total}");
        assert_eq!(lp.token.id, 5);
        assert_eq!(lp.top.len(), 4);
        let mut order: Vec<u32> = (0..300).collect();
        order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
        let want: Vec<u32> = order[..4].to_vec();
        assert_eq!(lp.top.iter().map(|a| a.id).collect::<Vec<_>>(), want);
        assert!(lp.top.windows(2).all(|w| w[0].logprob >= w[1].logprob));
        assert!(token_logprob(&logits, 5, 0, &tok).top.is_empty());
    }

    #[test]
    fn a_panic_fails_its_request_and_the_engine_goes_on() {
        let tok = synthetic_tokenizer("flaky");
        let (send, jobs) = std::sync::mpsc::channel();
        let admission = Admission::new(8);
        let mut replies = Vec::new();
        for prompt in [vec![1, 666], vec![1, 2]] {
            let (events, reply) = tokio::sync::mpsc::unbounded_channel();
            send.send(Job {
                prompt,
                max_tokens: 2,
                sampling: SamplerConfig::greedy(),
                stop: vec![],
                logprobs: None,
                n: 1,
                events,
                constraint: None,
                lazy: None,
                ticket: Some(admission.try_admit().unwrap()),
            })
            .unwrap();
            replies.push(reply);
        }
        drop(send);
        let cfg = EngineConfig {
            parallel: 1,
            n_ctx: 64,
            prefill_chunk: 16,
        };
        let metrics = Metrics::default();
        let mut engine = Flaky { lens: vec![0] };
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let result = run_engine(&mut engine, &tok, &cfg, jobs, &metrics);
        std::panic::set_hook(hook);
        result.unwrap();
        let first = replies[0].try_recv().unwrap();
        assert!(
            matches!(&first, (0, Event::Failed(m)) if m.contains("internal error") && m.contains("a bug this prompt meets")),
            "{first:?}"
        );
        let mut done = false;
        while let Ok(e) = replies[1].try_recv() {
            done |= matches!(e, (0, Event::Done { .. }));
        }
        assert!(done, "the second request was not served");
    }

    #[test]
    fn admission_bounds_requests_in_the_system() {
        let a = Admission::new(2);
        let t1 = a.try_admit().expect("first");
        let t2 = a.try_admit().expect("second");
        assert!(a.try_admit().is_none());
        drop(t1);
        let t3 = a.try_admit().expect("a place was freed");
        assert_eq!(a.in_system(), 2);
        drop((t2, t3));
        assert_eq!(a.in_system(), 0);
    }
}
