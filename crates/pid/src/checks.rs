//! Pure validity checks used by the detectors: check digits, calendar dates and
//! UK postcode areas. No regexes here, so each rule can be tested on its own.

/// Modulus 11 check shared by NHS and CHI numbers: weights 10..2 on the first nine
/// digits; check = 11 - (sum mod 11), where 11 means 0 and 10 means invalid.
pub fn mod11_valid(digits: &[u8; 10]) -> bool {
    mod11_check_digit(
        digits[..9]
            .try_into()
            .expect("slice of 9 from an array of 10"),
    ) == Some(digits[9])
}

/// The check digit for nine leading digits, or `None` when no check digit makes a
/// valid number (remainder 1, check would be 10).
pub fn mod11_check_digit(first9: &[u8; 9]) -> Option<u8> {
    let sum: u32 = first9
        .iter()
        .zip((2..=10u32).rev())
        .map(|(d, w)| u32::from(*d) * w)
        .sum();
    match 11 - (sum % 11) {
        11 => Some(0),
        10 => None,
        c => Some(u8::try_from(c).expect("c is in 1..=9")),
    }
}

fn days_in_month(month: u32, year: Option<u32>) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 => match year {
            Some(y) if !(y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)) => 28,
            _ => 29,
        },
        _ => 0,
    }
}

/// A plausible calendar day. `year` is a four-digit year when known.
pub fn valid_day(day: u32, month: u32, year: Option<u32>) -> bool {
    (1..=12).contains(&month) && day >= 1 && day <= days_in_month(month, year)
}

/// CHI numbers start with the date of birth as DDMMYY.
pub fn chi_date_prefix(digits: &[u8; 10]) -> bool {
    let day = u32::from(digits[0]) * 10 + u32::from(digits[1]);
    let month = u32::from(digits[2]) * 10 + u32::from(digits[3]);
    valid_day(day, month, None)
}

/// Month number for an English month name or abbreviation (case-insensitive).
#[cfg(test)]
pub fn month_from_name(word: &str) -> Option<u32> {
    month_from_letters(word.trim_end_matches('.').as_bytes())
}

/// Month number for an English month name or abbreviation given as bytes
/// (ASCII, any case), without allocating: the first month whose name starts
/// with the word, which must have at least three letters.
pub fn month_from_letters(w: &[u8]) -> Option<u32> {
    const MONTHS: [&[u8]; 12] = [
        b"january",
        b"february",
        b"march",
        b"april",
        b"may",
        b"june",
        b"july",
        b"august",
        b"september",
        b"october",
        b"november",
        b"december",
    ];
    if w.len() < 3 {
        return None;
    }
    MONTHS
        .iter()
        .position(|m| m.len() >= w.len() && m[..w.len()].eq_ignore_ascii_case(w))
        .and_then(|i| u32::try_from(i + 1).ok())
}

/// UK postcode areas (the letters of the outward code). Checking the area turns a
/// loose shape (letters, digit, digit, letters) into a precise one, so clinical
/// shorthand that happens to fit the shape is not flagged.
const POSTCODE_AREAS: &[&str] = &[
    "AB", "AL", "B", "BA", "BB", "BD", "BF", "BH", "BL", "BN", "BR", "BS", "BT", "BX", "CA", "CB",
    "CF", "CH", "CM", "CO", "CR", "CT", "CV", "CW", "DA", "DD", "DE", "DG", "DH", "DL", "DN", "DT",
    "DY", "E", "EC", "EH", "EN", "EX", "FK", "FY", "G", "GL", "GU", "GY", "HA", "HD", "HG", "HP",
    "HR", "HS", "HU", "HX", "IG", "IM", "IP", "IV", "JE", "KA", "KT", "KW", "KY", "L", "LA", "LD",
    "LE", "LL", "LN", "LS", "LU", "M", "ME", "MK", "ML", "N", "NE", "NG", "NN", "NP", "NR", "NW",
    "OL", "OX", "PA", "PE", "PH", "PL", "PO", "PR", "RG", "RH", "RM", "S", "SA", "SE", "SG", "SK",
    "SL", "SM", "SN", "SO", "SP", "SR", "SS", "ST", "SW", "SY", "TA", "TD", "TF", "TN", "TQ", "TR",
    "TS", "TW", "UB", "W", "WA", "WC", "WD", "WF", "WN", "WR", "WS", "WV", "YO", "ZE",
];

/// [`POSTCODE_AREAS`] as bit sets: bit `x` of `[0]` for the one-letter area
/// `A + x`, and bit `y` of `[1 + x]` for the two-letter area `(A + x)(A + y)`.
const AREA_BITS: [u32; 27] = {
    let mut t = [0u32; 27];
    let mut i = 0;
    while i < POSTCODE_AREAS.len() {
        let a = POSTCODE_AREAS[i].as_bytes();
        let x = (a[0] - b'A') as usize;
        if a.len() == 1 {
            t[0] |= 1 << x;
        } else {
            t[1 + x] |= 1 << (a[1] - b'A');
        }
        i += 1;
    }
    t
};

/// [`postcode_area_known`] for an area of one or two ASCII capitals.
pub fn postcode_area_letters_known(area: &[u8]) -> bool {
    let bit = |c: u8| c.is_ascii_uppercase().then(|| 1u32 << (c - b'A'));
    match *area {
        [a] => bit(a).is_some_and(|m| AREA_BITS[0] & m != 0),
        [a, b] => {
            a.is_ascii_uppercase()
                && bit(b).is_some_and(|m| AREA_BITS[1 + usize::from(a - b'A')] & m != 0)
        }
        _ => false,
    }
}

/// True when `outward` (e.g. "LS1", "SW1A", "M60") starts with a real postcode area.
#[cfg(test)]
pub fn postcode_area_known(outward: &str) -> bool {
    let letters: &str = outward
        .split(|c: char| c.is_ascii_digit())
        .next()
        .unwrap_or_default();
    POSTCODE_AREAS.binary_search(&letters).is_ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn digits(s: &str) -> [u8; 10] {
        let v: Vec<u8> = s.bytes().map(|b| b - b'0').collect();
        v.try_into().unwrap()
    }

    #[test]
    fn mod11_known_answers() {
        // The example from the NHS data dictionary and test-range numbers.
        assert!(mod11_valid(&digits("9434765919")));
        assert!(mod11_valid(&digits("9990000018")));
        assert!(!mod11_valid(&digits("9434765918")));
        assert!(!mod11_valid(&digits("1234567890")));
        // Remainder 1 -> check digit 10 -> no valid number with this stem.
        assert_eq!(mod11_check_digit(&[0, 0, 0, 0, 0, 0, 0, 0, 6]), None);
    }

    #[test]
    fn dates_and_areas() {
        assert!(valid_day(29, 2, Some(2000)));
        assert!(!valid_day(29, 2, Some(1900)));
        assert!(!valid_day(31, 4, None));
        assert_eq!(month_from_name("Sept."), Some(9));
        assert_eq!(month_from_name("mar"), Some(3));
        assert_eq!(month_from_name("ma"), None);
        for a in b'A'..=b'Z' {
            assert_eq!(
                postcode_area_letters_known(&[a]),
                postcode_area_known(&(a as char).to_string())
            );
            for b in b'A'..=b'Z' {
                let s = format!("{}{}", a as char, b as char);
                assert_eq!(
                    postcode_area_letters_known(s.as_bytes()),
                    postcode_area_known(&s),
                    "{s}"
                );
            }
        }
        assert!(postcode_area_known("SW1A"));
        assert!(postcode_area_known("M60"));
        assert!(!postcode_area_known("QQ1"));
        assert!(chi_date_prefix(&digits("0101501234")));
        assert!(
            POSTCODE_AREAS.windows(2).all(|w| w[0] < w[1]),
            "sorted for binary search"
        );
        assert!(!chi_date_prefix(&digits("9434765919")));
    }
}
