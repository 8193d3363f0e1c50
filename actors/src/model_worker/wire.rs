//! What edges and workers say to each other over core NATS, as JSON.
//!
//! - An edge publishes a [`Request`] to `<prefix>.cmd.model.<model>` with a reply subject (an
//!   inbox); one worker of the model's queue group takes it.
//! - The worker answers on the inbox: [`Reply::Accepted`] (or `Error` with `model_busy`), then
//!   `Text` pieces, `Alive` every heartbeat interval while the request waits or runs, and last
//!   `Done` or `Error`. An edge that hears nothing for its worker timeout gives up (`worker_lost`).
//! - An edge whose client left publishes the inbox to `<prefix>.cmd.worker.<id>.cancel`.
//! - Workers announce themselves with a [`Heartbeat`] on `<prefix>.sig.worker.<model>`.

use revo_engine::engine::{Finish, Sampling};
use serde::{Deserialize, Serialize};

use crate::model_thread::{known_code, Failure, Outcome};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    pub prompt: String,
    /// A chat, rendered by the worker with the model's template (replaces `prompt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<revo_engine::local::Message>>,
    /// `max_tokens`, `temperature`, `top_p`, `top_k`, `repetition_penalty`, `seed`.
    #[serde(flatten)]
    pub sampling: Sampling,
    pub stop: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    Accepted {
        worker: String,
        device: String,
    },
    Text {
        text: String,
    },
    /// A token's log-probabilities (sent only when the request asks for them).
    Logprobs {
        logprobs: revo_engine::local::TokenLogprob,
    },
    Alive,
    Done {
        text: String,
        prompt_tokens: usize,
        completion_tokens: usize,
        /// `stop` or `length`.
        finish_reason: String,
        time_to_first_token_ms: u64,
        duration_ms: u64,
        worker: String,
        device: String,
    },
    Error {
        code: String,
        message: String,
    },
}

pub fn finish_reason(f: Finish) -> &'static str {
    match f {
        Finish::Stop => "stop",
        Finish::Length => "length",
    }
}

impl Reply {
    pub fn done(o: Outcome) -> Reply {
        Reply::Done {
            finish_reason: finish_reason(o.finish).into(),
            text: o.text,
            prompt_tokens: o.prompt_tokens,
            completion_tokens: o.completion_tokens,
            time_to_first_token_ms: o.time_to_first_token_ms,
            duration_ms: o.duration_ms,
            worker: o.worker,
            device: o.device,
        }
    }

    pub fn error(f: &Failure) -> Reply {
        Reply::Error {
            code: f.code.into(),
            message: f.message.clone(),
        }
    }

    /// The outcome a `Done` or `Error` carries.
    pub fn outcome(self) -> Option<Result<Outcome, Failure>> {
        match self {
            Reply::Done {
                text,
                prompt_tokens,
                completion_tokens,
                finish_reason,
                time_to_first_token_ms,
                duration_ms,
                worker,
                device,
            } => Some(Ok(Outcome {
                text,
                prompt_tokens,
                completion_tokens,
                finish: if finish_reason == "length" {
                    Finish::Length
                } else {
                    Finish::Stop
                },
                time_to_first_token_ms,
                duration_ms,
                worker,
                device,
            })),
            Reply::Error { code, message } => Some(Err(Failure {
                code: known_code(&code),
                message,
            })),
            _ => None,
        }
    }
}

/// A worker's periodic announcement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub worker: String,
    pub model: String,
    /// `cpu`, `cuda:N`, or why the model failed to load.
    pub device: String,
    pub loaded: bool,
    pub queued: usize,
    pub active: usize,
    pub max_batch: usize,
    /// Tokens produced per second over the last interval.
    pub tokens_per_s: f64,
    /// Interval between heartbeats, in milliseconds.
    pub every_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_round_trip_as_json() {
        let r = Request {
            prompt: "hi".into(),
            messages: None,
            sampling: Sampling {
                seed: Some(7),
                logprobs: Some(2),
                ..Sampling::greedy(5)
            },
            stop: vec!["\n".into()],
        };
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(
            json["max_tokens"], 5,
            "sampling fields sit beside the prompt: {json}"
        );
        let back: Request = serde_json::from_value(json).unwrap();
        assert_eq!(
            (back.prompt, back.sampling, back.stop),
            (r.prompt, r.sampling, r.stop)
        );

        let o = Outcome {
            text: "x".into(),
            prompt_tokens: 1,
            completion_tokens: 2,
            finish: Finish::Length,
            time_to_first_token_ms: 3,
            duration_ms: 4,
            worker: "w".into(),
            device: "cpu".into(),
        };
        let reply: Reply =
            serde_json::from_str(&serde_json::to_string(&Reply::done(o.clone())).unwrap()).unwrap();
        assert_eq!(reply.outcome(), Some(Ok(o)));
        let f = Failure {
            code: "worker_lost",
            message: "gone".into(),
        };
        assert_eq!(Reply::error(&f).outcome(), Some(Err(f)));
        // A code this edge does not know is a generic failure, not a panic.
        let odd = Reply::Error {
            code: "new_code".into(),
            message: "m".into(),
        };
        assert_eq!(
            odd.outcome().unwrap().unwrap_err().code,
            "generation_failed"
        );
        assert_eq!(Reply::Alive.outcome(), None);
    }
}
