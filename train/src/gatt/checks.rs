//! Automatic checks of the checkable constraints in an answer, and the
//! rewrite that makes a dataset answer obey them (for the single-turn
//! system-message demonstrations of [`super::demos`]).
//!
//! Words: the answer split on whitespace, each piece stripped of leading
//! and trailing characters that are neither letters nor digits, empty
//! pieces dropped ("Yes, amen." has the words `Yes`, `amen`). An empty
//! answer passes no check.
//!
//! The checker ([`passes`]) and the rewrite ([`comply`]) are written
//! separately: the checker reads only the definition above; the tests
//! check the rewrite with the checker.
//!
//! Public items: [`words`], [`passes`], [`comply`].

use super::instructions::Check;

/// The words of a text (see the module header).
pub fn words(text: &str) -> Vec<&str> {
    text.split_whitespace().map(|w| w.trim_matches(|c: char| !c.is_alphanumeric())).filter(|w| !w.is_empty()).collect()
}

/// Whether `answer` obeys `check`.
pub fn passes(check: &Check, answer: &str) -> bool {
    let ws = words(answer);
    if ws.is_empty() {
        return false;
    }
    match check {
        Check::EndWord(w) => ws.last().is_some_and(|l| l.to_lowercase() == w.to_lowercase()),
        Check::MaxWords(n) => ws.len() <= *n,
        Check::Mention(w) => ws.iter().any(|x| x.to_lowercase() == w.to_lowercase()),
        Check::Capitals => answer.chars().any(|c| c.is_alphabetic()) && !answer.chars().any(|c| c.is_lowercase()),
        Check::Lowercase => answer.chars().any(|c| c.is_alphabetic()) && !answer.chars().any(|c| c.is_uppercase()),
    }
}

/// `answer` rewritten to obey every check: cut to the word budget (leaving
/// room for the words added next), the mentioned word put first ("tea, ..."),
/// the end word appended, everything in capitals (or in small letters) last.
/// An empty answer becomes "Yes."; an answer without letters under a case
/// check gets "Yes." first.
pub fn comply(answer: &str, checks: &[&Check]) -> String {
    let mut text = answer.trim().to_string();
    if words(&text).is_empty() {
        text = "Yes.".into();
    }
    let mention = checks.iter().find_map(|c| if let Check::Mention(w) = c { Some(w.as_str()) } else { None });
    let end = checks.iter().find_map(|c| if let Check::EndWord(w) = c { Some(w.as_str()) } else { None });
    let budget = checks.iter().find_map(|c| if let Check::MaxWords(n) = c { Some(*n) } else { None });
    let caps = checks.iter().any(|c| matches!(c, Check::Capitals));
    let small = checks.iter().any(|c| matches!(c, Check::Lowercase));
    if (caps || small) && !text.chars().any(|c| c.is_alphabetic()) {
        // capitals need a letter; put it first so a word budget keeps it
        text = format!("Yes. {text}");
    }
    if let Some(n) = budget {
        let added = mention.is_some() as usize + end.is_some() as usize;
        let keep = n.saturating_sub(added).max(1);
        let pieces: Vec<&str> = text.split_whitespace().collect();
        if words(&text).len() > keep {
            // keep whitespace pieces until `keep` words are in
            let mut out = Vec::new();
            let mut count = 0;
            for p in pieces {
                let w = words(p).len();
                if count + w > keep {
                    break;
                }
                count += w;
                out.push(p);
            }
            text = out.join(" ");
            if words(&text).is_empty() {
                text = "Yes".into();
            }
        }
    }
    if let Some(w) = mention {
        text = format!("{w}, {text}");
    }
    if let Some(w) = end {
        text = format!("{} {w}.", text.trim_end());
    }
    if caps {
        text = text.to_uppercase();
    } else if small {
        text = text.to_lowercase();
    }
    text
}
