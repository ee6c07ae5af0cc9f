//! Claude's request rules, shared by the two wire formats llmux serves Claude in: Anthropic
//! Messages ([`super::anthropic`]) and Bedrock Converse ([`super::bedrock::request`]). The
//! blocks differ (`tool_result` or `toolResult`, top-level fields or
//! `additionalModelRequestFields`); the rules on them are the model's and live here once:
//!
//! * Turns: consecutive messages of one role merge into one turn; every tool result must
//!   answer a call of the assistant turn before it, once, and every call must be answered in
//!   the very next turn; the conversation starts with the user; results come first in their
//!   user turn.
//! * Reasoning: `thinking` passes through as sent, or `reasoning_effort` becomes a thinking
//!   budget (LiteLLM's budgets); the budget is fitted under the output limit; thinking is left
//!   off on a turn that continues after tool results (its signed thinking blocks cannot travel
//!   through OpenAI messages).
//! * Sampling: temperature is clamped to 0–1, `top_p` is dropped next to `temperature`
//!   (pitfall 15), and reasoning refuses a temperature other than 1, `top_p` below 0.95,
//!   `top_k`, forced tool calls and a final assistant message (prefill).

use crate::types::{ChatRequest, GatewayError};
use serde_json::{json, Value};

/// The smallest thinking budget Claude takes.
pub const MIN_THINKING_BUDGET: u64 = 1024;

/// How an adapter refuses what it cannot send (its messages name the provider and kind).
pub trait Refuse {
    fn provider(&self) -> &str;
    /// A parameter the provider cannot honour: a 400 naming it, or `Ok` (dropped, logged)
    /// with `drop_unsupported_params`.
    fn unsupported(&self, what: &str, param: &str) -> Result<(), GatewayError>;
    /// A request the provider cannot take in any mode.
    fn invalid(&self, what: &str, param: &str) -> GatewayError;
}

// ---------------------------------------------------------------------------------------
// Turns and tool pairing
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Role {
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One message being built, with the tool ids it holds (for the pairing checks).
pub struct Turn {
    pub role: Role,
    pub blocks: Vec<Value>,
    /// Tool-use ids and the OpenAI field they came from.
    pub calls: Vec<(String, String)>,
    /// Tool-use ids answered by this turn's results.
    pub results: Vec<String>,
}

/// Appends blocks to the conversation, merging into the previous turn of the same role.
pub fn push_turn(
    turns: &mut Vec<Turn>,
    role: Role,
    blocks: Vec<Value>,
    calls: Vec<(String, String)>,
    results: Vec<String>,
) {
    if blocks.is_empty() {
        return;
    }
    match turns.last_mut() {
        Some(t) if t.role == role => {
            t.blocks.extend(blocks);
            t.calls.extend(calls);
            t.results.extend(results);
        }
        _ => turns.push(Turn {
            role,
            blocks,
            calls,
            results,
        }),
    }
}

/// A `tool` message for `tool_call_id` (`id` once rewritten) must answer a call of the
/// assistant turn before it, and only once.
pub fn check_tool_result(
    cx: &dyn Refuse,
    turns: &[Turn],
    tool_call_id: &str,
    id: &str,
    param: &str,
) -> Result<(), GatewayError> {
    let open = turns.iter().rev().find(|t| t.role == Role::Assistant);
    if !open.is_some_and(|t| t.calls.iter().any(|(c, _)| c == id)) {
        return Err(cx.invalid(
            &format!("the `tool` message for `{tool_call_id}` answers no tool call of the assistant message before it"),
            param,
        ));
    }
    if turns
        .last()
        .is_some_and(|t| t.role == Role::User && t.results.iter().any(|r| r == id))
    {
        return Err(cx.invalid(
            &format!("tool call `{tool_call_id}` has more than one `tool` message"),
            param,
        ));
    }
    Ok(())
}

/// Every tool call needs its result in the very next (user) turn; OpenAI rejects a missing
/// one too, so this is a 400 rather than a synthetic result.
pub fn check_calls_answered(cx: &dyn Refuse, turns: &[Turn]) -> Result<(), GatewayError> {
    for (k, turn) in turns.iter().enumerate() {
        let answered = turns
            .get(k + 1)
            .map(|t| t.results.as_slice())
            .unwrap_or(&[]);
        if let Some((id, param)) = turn.calls.iter().find(|(id, _)| !answered.contains(id)) {
            return Err(cx.invalid(
                &format!("tool call `{id}` has no `tool` message with its result"),
                param,
            ));
        }
    }
    Ok(())
}

/// The conversation starts with the user: a placeholder user turn (`placeholder`, a text
/// block in the caller's format) goes first when it would not.
pub fn ensure_user_first(turns: &mut Vec<Turn>, placeholder: Value) {
    if turns.first().is_none_or(|t| t.role == Role::Assistant) {
        turns.insert(
            0,
            Turn {
                role: Role::User,
                blocks: vec![placeholder],
                calls: Vec::new(),
                results: Vec::new(),
            },
        );
    }
}

/// Tool results first in every user turn, then whatever the user added (stable order
/// otherwise). A block for which `attached` holds (a cache point) moves with the block
/// before it.
pub fn results_first(
    turns: &mut [Turn],
    is_result: impl Fn(&Value) -> bool,
    attached: impl Fn(&Value) -> bool,
) {
    for turn in turns.iter_mut().filter(|t| t.role == Role::User) {
        let mut units: Vec<Vec<Value>> = Vec::new();
        for b in std::mem::take(&mut turn.blocks) {
            match units.last_mut() {
                Some(u) if attached(&b) => u.push(b),
                _ => units.push(vec![b]),
            }
        }
        let (results, rest): (Vec<Vec<Value>>, Vec<Vec<Value>>) =
            units.into_iter().partition(|u| is_result(&u[0]));
        turn.blocks = results.into_iter().chain(rest).flatten().collect();
    }
}

/// Whether the newest turn carries tool results (the request continues a tool loop).
pub fn continues_tool_loop(turns: &[Turn]) -> bool {
    turns
        .last()
        .is_some_and(|t| t.role == Role::User && !t.results.is_empty())
}

// ---------------------------------------------------------------------------------------
// Reasoning
// ---------------------------------------------------------------------------------------

/// A `thinking` block and whether llmux chose its budget (and so may lower it to fit under
/// the output limit).
pub type Thinking = Option<(Value, bool)>;

/// A valid `reasoning_effort` other than `none`.
pub fn effort<'r>(cx: &dyn Refuse, req: &'r ChatRequest) -> Result<Option<&'r str>, GatewayError> {
    match req.reasoning_effort.as_deref() {
        None | Some("none") => Ok(None),
        Some(e @ ("minimal" | "low" | "medium" | "high" | "xhigh" | "max")) => Ok(Some(e)),
        Some(other) => Err(cx.invalid(
            &format!("`reasoning_effort` `{other}` is not one of none, minimal, low, medium, high, xhigh, max"),
            "reasoning_effort",
        )),
    }
}

/// `thinking` passed through as sent, or derived from `reasoning_effort` with the budgets
/// LiteLLM picks for the same efforts.
pub fn thinking(cx: &dyn Refuse, req: &ChatRequest) -> Result<Thinking, GatewayError> {
    if let Some(t) = req.extra.get("thinking").filter(|v| !v.is_null()) {
        return Ok(Some((t.clone(), false)));
    }
    let budget: u64 = match effort(cx, req)? {
        None => return Ok(None),
        Some("minimal" | "low") => 1024,
        Some("medium") => 2048,
        Some("high") => 4096,
        Some("xhigh") => 8192,
        Some(_) => 16384,
    };
    Ok(Some((
        json!({"type": "enabled", "budget_tokens": budget}),
        true,
    )))
}

/// Thinking is left off on a turn that continues after tool results: Claude wants the
/// previous turn's signed thinking blocks back there, and OpenAI messages cannot carry them
/// (Anthropic's own error message advises disabling thinking).
pub fn leave_off_after_tool_results(cx: &dyn Refuse, thinking: &mut Thinking, turns: &[Turn]) {
    if thinking.is_some() && continues_tool_loop(turns) {
        log::debug!(
            "provider '{}': thinking left off for this tool-result turn",
            cx.provider()
        );
        *thinking = None;
    }
}

/// Whether thinking is switched on (`enabled` or `adaptive`).
pub fn thinking_on(thinking: &Thinking) -> bool {
    thinking.as_ref().is_some_and(|(t, _)| {
        matches!(
            t.get("type").and_then(Value::as_str),
            Some("enabled" | "adaptive")
        )
    })
}

/// The thinking budget, when there is one.
pub fn budget(thinking: &Thinking) -> Option<u64> {
    thinking
        .as_ref()
        .and_then(|(t, _)| t.get("budget_tokens"))
        .and_then(Value::as_u64)
}

/// Fits a budget llmux chose under `max_tokens` (which counts thinking, like OpenAI's
/// `max_completion_tokens` counts reasoning); too small a limit is a 400.
pub fn fit_budget(
    cx: &dyn Refuse,
    thinking: &mut Thinking,
    max_tokens: u64,
) -> Result<(), GatewayError> {
    let b = budget(thinking);
    if let (Some((t, true)), Some(b)) = (thinking, b) {
        if b >= max_tokens {
            if max_tokens <= MIN_THINKING_BUDGET {
                return Err(cx.invalid(
                    &format!("`max_completion_tokens` must exceed {MIN_THINKING_BUDGET} when `reasoning_effort` is set"),
                    "max_completion_tokens",
                ));
            }
            t["budget_tokens"] = (max_tokens - 1).into();
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Sampling
// ---------------------------------------------------------------------------------------

/// The sampling parameters sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<Value>,
}

impl Sampling {
    /// Claude's sampling from a request: temperature clamped to 0–1 (OpenAI's range is 0–2),
    /// `top_p` (given by the caller, which may have clamped it) dropped when `temperature` is
    /// set, since newer Claude models reject both (pitfall 15); `top_k` from the request's
    /// extra fields.
    pub fn claude(cx: &dyn Refuse, req: &ChatRequest, top_p: Option<f64>) -> Sampling {
        let temperature = req.temperature.map(|t| t.clamp(0.0, 1.0));
        let mut top_p = top_p;
        if temperature.is_some() && top_p.take().is_some() {
            log::debug!(
                "provider '{}': dropping `top_p` because `temperature` is set",
                cx.provider()
            );
        }
        Sampling {
            temperature,
            top_p,
            top_k: req.extra.get("top_k").filter(|v| !v.is_null()).cloned(),
        }
    }

    /// [`Self::limit_for_reasoning`] when `thinking` is on. A forced tool call comes from
    /// `response_format` (named `json_label` in the message) in JSON mode, else from
    /// `tool_choice`; `prefill` says the conversation ends with an assistant turn.
    pub fn limit_when_thinking(
        &mut self,
        cx: &dyn Refuse,
        thinking: &Thinking,
        (forced, json_mode, json_label): (bool, bool, &str),
        prefill: bool,
    ) -> Result<(), GatewayError> {
        if !thinking_on(thinking) {
            return Ok(());
        }
        let param = if json_mode {
            "response_format"
        } else {
            "tool_choice"
        };
        self.limit_for_reasoning(cx, forced.then_some((param, json_label)), prefill)
    }

    /// What reasoning does not take: a temperature other than 1, `top_p` below 0.95 and
    /// `top_k` are refused (or dropped); a forced tool call (`forced`: the parameter that
    /// forces it and how the message names it) and a final assistant message (`prefill`)
    /// are always a 400.
    pub fn limit_for_reasoning(
        &mut self,
        cx: &dyn Refuse,
        forced: Option<(&str, &str)>,
        prefill: bool,
    ) -> Result<(), GatewayError> {
        if self.temperature.is_some_and(|t| t != 1.0) {
            cx.unsupported(
                "`temperature` other than 1 together with reasoning",
                "temperature",
            )?;
            self.temperature = None;
        }
        if self.top_p.is_some_and(|p| !(0.95..=1.0).contains(&p)) {
            cx.unsupported("`top_p` below 0.95 together with reasoning", "top_p")?;
            self.top_p = None;
        }
        if self.top_k.is_some() {
            cx.unsupported("`top_k` together with reasoning", "top_k")?;
            self.top_k = None;
        }
        if let Some((param, json_name)) = forced {
            return Err(cx.invalid(
                &format!("forcing a tool call (`tool_choice` `required` or named, or {json_name}) cannot be combined with reasoning"),
                param,
            ));
        }
        if prefill {
            return Err(cx.invalid(
                "a final assistant message (prefill) cannot be combined with reasoning",
                "messages",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Cx(bool);

    impl Refuse for Cx {
        fn provider(&self) -> &str {
            "p"
        }
        fn unsupported(&self, what: &str, param: &str) -> Result<(), GatewayError> {
            if self.0 {
                Ok(())
            } else {
                Err(GatewayError::invalid(what.to_owned(), param))
            }
        }
        fn invalid(&self, what: &str, param: &str) -> GatewayError {
            GatewayError::invalid(what.to_owned(), param)
        }
    }

    fn req(v: Value) -> ChatRequest {
        let mut v = v;
        v["model"] = "m".into();
        v["messages"] = json!([{"role": "user", "content": "x"}]);
        serde_json::from_value(v).unwrap()
    }

    fn text(t: &str) -> Value {
        json!({ "text": t })
    }

    #[test]
    fn turns_merge_pair_and_put_results_first() {
        let cx = Cx(false);
        let mut turns = Vec::new();
        push_turn(
            &mut turns,
            Role::Assistant,
            vec![text("calling")],
            vec![("a".into(), "messages[0].tool_calls[0]".into())],
            vec![],
        );
        push_turn(&mut turns, Role::User, vec![], vec![], vec![]);
        assert_eq!(turns.len(), 1, "empty blocks add nothing");
        assert!(check_calls_answered(&cx, &turns).is_err());
        assert!(check_tool_result(&cx, &turns, "b", "b", "p").is_err());
        assert!(check_tool_result(&cx, &turns, "a", "a", "p").is_ok());
        push_turn(
            &mut turns,
            Role::User,
            vec![text("note"), json!({"cachePoint": {}})],
            vec![],
            vec![],
        );
        push_turn(
            &mut turns,
            Role::User,
            vec![json!({"result": "a"})],
            vec![],
            vec!["a".into()],
        );
        assert_eq!(turns.len(), 2, "same-role messages merge");
        assert!(
            check_tool_result(&cx, &turns, "a", "a", "p").is_err(),
            "answered twice"
        );
        assert!(check_calls_answered(&cx, &turns).is_ok());
        assert!(continues_tool_loop(&turns));
        ensure_user_first(&mut turns, text("(continue)"));
        assert_eq!(turns[0].role, Role::User);
        results_first(
            &mut turns,
            |b| b.get("result").is_some(),
            |b| b.get("cachePoint").is_some(),
        );
        assert_eq!(
            turns[2].blocks,
            vec![
                json!({"result": "a"}),
                text("note"),
                json!({"cachePoint": {}})
            ]
        );
    }

    #[test]
    fn reasoning_budgets_and_limits() {
        let cx = Cx(false);
        let mut t = thinking(&cx, &req(json!({"reasoning_effort": "medium"}))).unwrap();
        assert_eq!(budget(&t), Some(2048));
        assert!(thinking_on(&t));
        fit_budget(&cx, &mut t, 2000).unwrap();
        assert_eq!(budget(&t), Some(1999));
        assert!(fit_budget(&cx, &mut t, 1000).is_err());
        // A client's own budget is never changed.
        let mut own = thinking(
            &cx,
            &req(json!({"thinking": {"type": "enabled", "budget_tokens": 5000}})),
        )
        .unwrap();
        fit_budget(&cx, &mut own, 100).unwrap();
        assert_eq!(budget(&own), Some(5000));
        assert!(thinking(&cx, &req(json!({"reasoning_effort": "none"})))
            .unwrap()
            .is_none());
        assert!(thinking(&cx, &req(json!({"reasoning_effort": "huge"}))).is_err());

        let r = req(json!({"temperature": 1.7, "top_p": 0.5, "top_k": 40}));
        let mut s = Sampling::claude(&cx, &r, r.top_p);
        assert_eq!((s.temperature, s.top_p), (Some(1.0), None));
        assert!(
            s.clone().limit_for_reasoning(&cx, None, false).is_err(),
            "top_k"
        );
        assert!(s
            .limit_for_reasoning(&Cx(true), Some(("tool_choice", "x")), false)
            .is_err());
        assert_eq!(s.top_k, None, "dropped with drop_unsupported_params");
        let mut s = Sampling::claude(&cx, &req(json!({})), None);
        assert!(s.limit_for_reasoning(&cx, None, true).is_err(), "prefill");
    }
}
