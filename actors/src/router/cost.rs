//! What a request can cost at most, from prices and token bounds (exact integers).

use revo_events::family::generation::PriceSheet;
use revo_events::{Usd, UsdPerMtok};

use super::catalog::Entry;

impl Entry {
    /// The prices as recorded in attempts.
    pub fn prices_sheet(&self) -> PriceSheet {
        PriceSheet {
            input: self.prices.input_usd_per_mtok,
            cache_read: self.prices.cached_input_usd_per_mtok,
            cache_write: self.prices.cache_write_usd_per_mtok,
            output: self.prices.output_usd_per_mtok,
        }
    }
}

/// Tokens a provider may add to a prompt with tools (Anthropic's tool-use system prompt is a
/// few hundred).
pub(super) const TOOLS_ALLOWANCE: u64 = 1024;

/// A prompt token may be billed as plain input, a cache read or a cache write: the dearest.
fn dearest_input(p: &PriceSheet) -> UsdPerMtok {
    p.input.max(p.cache_write).max(p.cache_read)
}

/// The most a request can cost: the prompt's worst case at the dearest input rate, and
/// `max_tokens` of output.
pub fn worst_cost(p: &PriceSheet, worst_in: u64, max_tokens: u32) -> Usd {
    let input = dearest_input(p).cost(worst_in);
    input
        .checked_add(p.output.cost(u64::from(max_tokens)))
        .unwrap_or(input)
}

/// The most output tokens that keep the worst case within `limit`: the prompt priced at the
/// dearest input rate (a cache write may cost more than plain input), the rest for output.
/// `None` if the prompt alone may exceed it; `u32::MAX` for free output.
pub fn output_cap(p: &PriceSheet, worst_in: u64, limit: Usd) -> Option<u32> {
    let left = limit.checked_sub(dearest_input(p).cost(worst_in))?;
    let per_token = p.output.cost(1).picos();
    if per_token == 0 {
        return Some(u32::MAX);
    }
    Some(u32::try_from(left.picos() / per_token).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_output_cap_keeps_the_worst_case_within_the_limit() {
        let p = PriceSheet {
            input: UsdPerMtok::parse("2.50").unwrap(),
            cache_read: UsdPerMtok::parse("1.25").unwrap(),
            cache_write: UsdPerMtok::ZERO,
            output: UsdPerMtok::parse("10").unwrap(),
        };
        // 1,000 prompt tokens at most: $0.0025; $0.01 leaves $0.0075 = 750 output tokens.
        let limit = Usd::parse("0.01").unwrap();
        let cap = output_cap(&p, 1000, limit).unwrap();
        assert_eq!(cap, 750);
        let worst = p
            .input
            .cost(1000)
            .checked_add(p.output.cost(u64::from(cap)));
        assert!(worst.unwrap() <= limit);
        assert!(p.input.cost(1000).checked_add(p.output.cost(751)).unwrap() > limit);
        assert_eq!(output_cap(&p, 1_000_000, limit), None);
        assert_eq!(
            output_cap(&PriceSheet::default(), 10, limit),
            Some(u32::MAX)
        );
    }
}
