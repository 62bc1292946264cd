//! Thinking text apart from the answer (issue #25): models that reason
//! (Qwen3, DeepSeek-R1 distills, ...) write `<think> … </think>` before
//! their answer; chat responses return it in `reasoning_content`, streamed as
//! it comes, and the answer in `content`, as the OpenAI-compatible servers
//! that run these models do.

/// Splits generated text into reasoning and answer, piece by piece. A piece
/// may end inside a marker: what could still be the start of one is held
/// back until the next piece (or the end) decides.
#[derive(Debug, Clone)]
pub struct ReasoningSplit {
    open: String,
    close: String,
    state: State,
    held: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// Nothing but whitespace yet: thinking if the open marker comes first.
    Start,
    /// Inside the thinking; `fresh` while its leading whitespace (after the
    /// open marker) is still being dropped.
    Thinking { fresh: bool },
    /// After the close marker; `fresh` while the answer's leading
    /// whitespace (the newlines after the marker) is still being dropped.
    Answer { fresh: bool },
}

/// Text now certain to be reasoning, and to be answer.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Split {
    pub reasoning: String,
    pub content: String,
}

impl ReasoningSplit {
    /// Markers of the model's vocabulary, and where the prompt left the
    /// model: `prompt` ending in the open marker (templates that open the
    /// thinking themselves) starts inside it; ending in the close marker
    /// (thinking turned off) starts in the answer.
    pub fn new(open: &str, close: &str, prompt: &str) -> Self {
        let tail = prompt.trim_end();
        let state = if tail.ends_with(close) {
            State::Answer { fresh: true }
        } else if tail.ends_with(open) {
            State::Thinking { fresh: true }
        } else {
            State::Start
        };
        ReasoningSplit {
            open: open.into(),
            close: close.into(),
            state,
            held: String::new(),
        }
    }

    /// The markers of a tokenizer's vocabulary, if it has both (`<think>` and
    /// `</think>`, as single tokens).
    pub fn markers(tok: &crate::tokenizer::Tokenizer) -> Option<(&'static str, &'static str)> {
        let (open, close) = ("<think>", "</think>");
        (tok.token_id(open).is_some() && tok.token_id(close).is_some()).then_some((open, close))
    }

    pub fn push(&mut self, piece: &str) -> Split {
        self.held.push_str(piece);
        let mut out = Split::default();
        loop {
            match self.state {
                State::Start => {
                    let t = self.held.trim_start();
                    if let Some(rest) = t.strip_prefix(self.open.as_str()) {
                        self.held = rest.to_string();
                        self.state = State::Thinking { fresh: true };
                    } else if !t.is_empty() && !self.open.starts_with(t) {
                        self.state = State::Answer { fresh: false };
                    } else {
                        return out; // empty, or still maybe the marker
                    }
                }
                State::Thinking { fresh } => {
                    if fresh {
                        let t = self.held.trim_start();
                        if t.is_empty() {
                            self.held.clear();
                            return out;
                        }
                        self.held = t.to_string();
                        self.state = State::Thinking { fresh: false };
                    }
                    if let Some(i) = self.held.find(self.close.as_str()) {
                        out.reasoning.push_str(&self.held[..i]);
                        self.held = self.held[i + self.close.len()..].to_string();
                        self.state = State::Answer { fresh: true };
                    } else {
                        let keep = partial_suffix(&self.held, &self.close);
                        let cut = self.held.len() - keep;
                        out.reasoning.push_str(&self.held[..cut]);
                        self.held = self.held[cut..].to_string();
                        return out;
                    }
                }
                State::Answer { fresh } => {
                    let text = if fresh {
                        self.held.trim_start()
                    } else {
                        &self.held
                    };
                    if !text.is_empty() {
                        out.content.push_str(text);
                        self.state = State::Answer { fresh: false };
                    }
                    self.held.clear();
                    return out;
                }
            }
        }
    }

    /// The end of the generation: whatever is held goes where it stands
    /// (an unclosed thinking stays reasoning).
    pub fn finish(&mut self) -> Split {
        let held = std::mem::take(&mut self.held);
        match self.state {
            State::Thinking { .. } => Split {
                reasoning: held,
                content: String::new(),
            },
            State::Answer { fresh: true } => Split {
                reasoning: String::new(),
                content: held.trim_start().to_string(),
            },
            _ => Split {
                reasoning: String::new(),
                content: held,
            },
        }
    }
}

/// Length of the longest proper suffix of `text` that starts `marker`.
fn partial_suffix(text: &str, marker: &str) -> usize {
    (1..marker.len())
        .rev()
        .find(|&k| {
            text.len() >= k
                && text.is_char_boundary(text.len() - k)
                && marker.starts_with(&text[text.len() - k..])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every way of cutting the text into pieces gives the same split.
    fn split_all(prompt: &str, text: &str) -> (String, String) {
        let mut results = Vec::new();
        for step in 1..=text.len() {
            let mut s = ReasoningSplit::new("<think>", "</think>", prompt);
            let (mut r, mut c) = (String::new(), String::new());
            let mut i = 0;
            while i < text.len() {
                let mut j = (i + step).min(text.len());
                while !text.is_char_boundary(j) {
                    j += 1;
                }
                let o = s.push(&text[i..j]);
                r.push_str(&o.reasoning);
                c.push_str(&o.content);
                i = j;
            }
            let o = s.finish();
            r.push_str(&o.reasoning);
            c.push_str(&o.content);
            results.push((r, c));
        }
        assert!(results.windows(2).all(|w| w[0] == w[1]), "{results:?}");
        results.pop().unwrap()
    }

    #[test]
    fn thinking_goes_to_reasoning_the_rest_to_content() {
        let (r, c) = split_all(
            "<|im_start|>assistant\n",
            "<think>\nLet me see: 2 + 2.\n</think>\n\nIt is 4.",
        );
        assert_eq!(r, "Let me see: 2 + 2.\n");
        assert_eq!(c, "It is 4.");
    }

    #[test]
    fn text_without_markers_is_all_content() {
        let (r, c) = split_all("", "  <thin is not a marker; 4 </think> either");
        assert_eq!(r, "");
        assert_eq!(c, "  <thin is not a marker; 4 </think> either");
    }

    #[test]
    fn a_prompt_that_opens_or_closes_the_thinking_decides_the_start() {
        // DeepSeek-R1-style templates open it in the prompt.
        let (r, c) = split_all("<｜Assistant｜><think>\n", "hmm, ünïcode.</think>Answer");
        assert_eq!((r.as_str(), c.as_str()), ("hmm, ünïcode.", "Answer"));
        // Qwen3 with enable_thinking false closes it in the prompt.
        let (r, c) = split_all("<think>\n\n</think>\n\n", "<think> is text here");
        assert_eq!((r.as_str(), c.as_str()), ("", "<think> is text here"));
    }

    #[test]
    fn unclosed_thinking_stays_reasoning() {
        let (r, c) = split_all("", "<think>still thinking when max_tokens ran out </thi");
        assert_eq!(r, "still thinking when max_tokens ran out </thi");
        assert_eq!(c, "");
    }
}
