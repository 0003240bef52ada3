//! Turning text into search terms: Unicode word boundaries (UAX #29), case folding
//! (lowercase) and accents stripped (NFD, combining marks dropped), so `Café`, `CAFE` and
//! `café` are one term. The index (at write time) and queries (at read time) use the same
//! function, so they always agree.
//!
//! This file is also compiled into the index benchmark (`benches/search_index/`), so the
//! measured index holds exactly the terms Hearth's holds; it uses only the two Unicode crates.

use unicode_normalization::{UnicodeNormalization, char::is_combining_mark};
use unicode_segmentation::UnicodeSegmentation;

/// Longest term kept, in bytes; longer words (hashes, URLs run together) are cut here.
pub const MAX_TERM_BYTES: usize = 48;

/// Most terms taken from one text (the rest of a huge message is not indexed).
pub const MAX_TERMS: usize = 1024;

/// The terms of `text`, in order, repeats included.
pub fn terms(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for word in text.unicode_words() {
        if out.len() == MAX_TERMS {
            break;
        }
        let term = normalise(word);
        if !term.is_empty() {
            out.push(term);
        }
    }
    out
}

/// One word folded: lowercase, accents stripped, at most [`MAX_TERM_BYTES`] bytes (cut on a
/// character boundary).
pub fn normalise(word: &str) -> String {
    let mut term = String::with_capacity(word.len());
    for c in word
        .nfd()
        .filter(|c| !is_combining_mark(*c))
        .flat_map(char::to_lowercase)
    {
        if term.len() + c.len_utf8() > MAX_TERM_BYTES {
            break;
        }
        term.push(c);
    }
    term
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_split_folded_and_stripped_of_accents() {
        assert_eq!(
            terms("Café au LAIT, s'il vous plaît!"),
            ["cafe", "au", "lait", "s'il", "vous", "plait"]
        );
        assert_eq!(terms("Straße ÅNGSTRÖM naïve"), ["straße", "angstrom", "naive"]);
        assert_eq!(terms("hello-world 3.14 a_b"), ["hello", "world", "3.14", "a_b"]);
        assert_eq!(terms("  ... !!! "), Vec::<String>::new());
        assert_eq!(terms("日本語のテキスト"), ["日", "本", "語", "の", "テキスト"]);
    }

    #[test]
    fn long_words_are_cut_on_a_character_boundary() {
        let long = "é".repeat(100);
        let term = normalise(&long);
        assert!(term.len() <= MAX_TERM_BYTES);
        assert_eq!(term, "e".repeat(MAX_TERM_BYTES));
        let wide = "語".repeat(40);
        assert_eq!(normalise(&wide).len(), 48);
    }
}
