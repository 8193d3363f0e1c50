//! Money, exactly: prices and costs are integers, never floating point.
//!
//! - A price is [`UsdPerMtok`]: micro-dollars per million tokens, written in configuration and
//!   the API as a decimal string of dollars with at most 6 decimals (`"0.15"`, `"2.50"`).
//! - A cost is [`Usd`]: pico-dollars (10⁻¹² USD). The cost of `n` tokens at a price is then
//!   `n × price` exactly (µUSD per 10⁶ tokens is 10⁻¹² USD per token), with no rounding
//!   anywhere; it is written as a decimal string of dollars with at most 12 decimals.
//!
//! Decimal strings are parsed by hand, digit by digit: no sign, no exponent, no more decimals
//! than the unit holds (rather than a silent rounding).

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("`{0}` is not an amount of dollars: write digits with an optional decimal point, like \"0.15\"")]
    NotDecimal(String),
    #[error("`{0}` has more than {1} decimals")]
    TooPrecise(String, u32),
    #[error("`{0}` is too large")]
    TooLarge(String),
}

/// Parses a non-negative decimal of dollars into units of 10^-`decimals` dollars.
fn parse_units(s: &str, decimals: u32) -> Result<u128, MoneyError> {
    let bad = || MoneyError::NotDecimal(s.to_owned());
    let (whole, frac) = match s.split_once('.') {
        Some((w, f)) => (w, f),
        None => (s, ""),
    };
    let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(frac) || (s.contains('.') && frac.is_empty()) {
        return Err(bad());
    }
    let significant = frac.trim_end_matches('0');
    if significant.len() > decimals as usize {
        return Err(MoneyError::TooPrecise(s.to_owned(), decimals));
    }
    let too_large = || MoneyError::TooLarge(s.to_owned());
    let mut units: u128 = 0;
    for b in whole.bytes() {
        units = units
            .checked_mul(10)
            .and_then(|u| u.checked_add(u128::from(b - b'0')))
            .ok_or_else(too_large)?;
    }
    let mut fraction: u128 = 0;
    for i in 0..decimals as usize {
        let d = significant.as_bytes().get(i).map_or(0, |b| b - b'0');
        fraction = fraction * 10 + u128::from(d);
    }
    units
        .checked_mul(10u128.pow(decimals))
        .and_then(|u| u.checked_add(fraction))
        .ok_or_else(too_large)
}

/// Writes units of 10^-`decimals` dollars as a decimal without trailing zeros.
fn write_units(f: &mut fmt::Formatter<'_>, units: u128, decimals: u32) -> fmt::Result {
    let scale = 10u128.pow(decimals);
    let (whole, frac) = (units / scale, units % scale);
    if frac == 0 {
        return write!(f, "{whole}");
    }
    let frac = format!("{frac:0width$}", width = decimals as usize);
    write!(f, "{whole}.{}", frac.trim_end_matches('0'))
}

/// A price: micro-dollars per million tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UsdPerMtok(u64);

impl UsdPerMtok {
    pub const ZERO: UsdPerMtok = UsdPerMtok(0);
    const DECIMALS: u32 = 6;

    pub fn from_micros(micros: u64) -> Self {
        UsdPerMtok(micros)
    }

    pub fn micros(self) -> u64 {
        self.0
    }

    /// Parses dollars per million tokens: `"0.15"`, `"10"`.
    pub fn parse(s: &str) -> Result<Self, MoneyError> {
        let units = parse_units(s, Self::DECIMALS)?;
        u64::try_from(units)
            .map(UsdPerMtok)
            .map_err(|_| MoneyError::TooLarge(s.to_owned()))
    }

    /// What `tokens` tokens cost at this price, exactly.
    pub fn cost(self, tokens: u64) -> Usd {
        Usd(u128::from(self.0) * u128::from(tokens))
    }
}

impl fmt::Display for UsdPerMtok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_units(f, u128::from(self.0), Self::DECIMALS)
    }
}

/// A cost or a budget: pico-dollars.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Usd(u128);

impl Usd {
    pub const ZERO: Usd = Usd(0);
    const DECIMALS: u32 = 12;

    pub fn from_picos(picos: u128) -> Self {
        Usd(picos)
    }

    pub fn picos(self) -> u128 {
        self.0
    }

    /// Parses dollars: `"10.00"`, `"0.000150"`.
    pub fn parse(s: &str) -> Result<Self, MoneyError> {
        parse_units(s, Self::DECIMALS).map(Usd)
    }

    pub fn checked_add(self, other: Usd) -> Option<Usd> {
        self.0.checked_add(other.0).map(Usd)
    }

    pub fn checked_sub(self, other: Usd) -> Option<Usd> {
        self.0.checked_sub(other.0).map(Usd)
    }
}

impl fmt::Display for Usd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_units(f, self.0, Self::DECIMALS)
    }
}

/// Both serialise as their decimal string (JSON numbers would invite floating point).
macro_rules! as_decimal_string {
    ($t:ty) => {
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                <$t>::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

as_decimal_string!(UsdPerMtok);
as_decimal_string!(Usd);

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn prices_parse_exactly_and_cost_tokens_without_rounding() {
        let p = UsdPerMtok::parse("0.15").unwrap();
        assert_eq!(p.micros(), 150_000);
        assert_eq!(p.to_string(), "0.15");
        // 1,000 tokens at $0.15 per million: $0.00015.
        assert_eq!(p.cost(1_000).to_string(), "0.00015");
        // One token at the smallest price: a millionth of a millionth of a dollar.
        assert_eq!(UsdPerMtok::parse("0.000001").unwrap().cost(1).picos(), 1);
        assert_eq!(UsdPerMtok::parse("2.50").unwrap().to_string(), "2.5");
        assert_eq!(
            UsdPerMtok::parse("10").unwrap().cost(3).to_string(),
            "0.00003"
        );
        assert_eq!(Usd::parse("10.00").unwrap().to_string(), "10");
        assert_eq!(Usd::ZERO.to_string(), "0");
        // Costs add up exactly where floating point does not (0.1 + 0.2).
        let (a, b) = (Usd::parse("0.1").unwrap(), Usd::parse("0.2").unwrap());
        assert_eq!(a.checked_add(b).unwrap().to_string(), "0.3");
    }

    #[test]
    fn bad_amounts_are_refused_with_a_reason() {
        for bad in [
            "", ".", "1.", ".5", "-0.1", "+1", "1e3", "0,15", " 1", "1 ", "NaN", "0x10",
        ] {
            assert!(
                matches!(UsdPerMtok::parse(bad), Err(MoneyError::NotDecimal(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            UsdPerMtok::parse("0.0000001"),
            Err(MoneyError::TooPrecise(..))
        ));
        // Trailing zeros past the unit are not precision.
        assert_eq!(UsdPerMtok::parse("0.1500000").unwrap().micros(), 150_000);
        assert!(matches!(
            UsdPerMtok::parse("99999999999999999999"),
            Err(MoneyError::TooLarge(_))
        ));
        assert!(matches!(
            Usd::parse(&"9".repeat(40)),
            Err(MoneyError::TooLarge(_))
        ));
    }

    #[test]
    fn serialises_as_a_decimal_string() {
        let p: UsdPerMtok = serde_json::from_str("\"3.75\"").unwrap();
        assert_eq!(serde_json::to_string(&p).unwrap(), "\"3.75\"");
        assert!(serde_json::from_str::<UsdPerMtok>("3.75").is_err());
        assert!(serde_json::from_str::<Usd>("\"-1\"").is_err());
    }

    proptest! {
        #[test]
        fn every_price_survives_display_and_parse(micros in any::<u64>()) {
            let p = UsdPerMtok::from_micros(micros);
            prop_assert_eq!(UsdPerMtok::parse(&p.to_string()).unwrap(), p);
        }

        #[test]
        fn every_cost_survives_display_and_parse(picos in any::<u128>()) {
            let c = Usd::from_picos(picos);
            prop_assert_eq!(Usd::parse(&c.to_string()).unwrap(), c);
        }

        #[test]
        fn cost_is_linear_in_tokens(micros in 0u64..1_000_000_000, a in 0u64..1 << 32, b in 0u64..1 << 32) {
            let p = UsdPerMtok::from_micros(micros);
            prop_assert_eq!(p.cost(a).checked_add(p.cost(b)).unwrap(), p.cost(a + b));
        }
    }
}
