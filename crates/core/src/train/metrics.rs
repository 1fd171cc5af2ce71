//! Evaluation scores: accuracy and macro-F1 for classification (scikit-learn's definitions),
//! entity-level precision, recall and F1 for tagging (seqeval's default mode).

use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashSet};

/// Precision, recall, F1 and support of one class or entity type.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
pub struct Score {
    /// Correct predictions of it over all predictions of it (0 when there are none).
    pub precision: f64,
    /// Correct predictions of it over its true occurrences (0 when there are none).
    pub recall: f64,
    /// The harmonic mean of the two (0 when both are 0).
    pub f1: f64,
    /// Its true occurrences.
    pub support: usize,
}

impl Score {
    /// From counts: `tp` correct, `predicted` predicted, `actual` true.
    pub fn from_counts(tp: usize, predicted: usize, actual: usize) -> Self {
        let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let (precision, recall) = (ratio(tp, predicted), ratio(tp, actual));
        let f1 = if precision + recall == 0.0 {
            0.0
        } else {
            2.0 * precision * recall / (precision + recall)
        };
        Score {
            precision,
            recall,
            f1,
            support: actual,
        }
    }
}

/// Accuracy and macro-F1 of a classifier.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassificationScores {
    /// Share of texts whose predicted label is the true one.
    pub accuracy: f64,
    /// The unweighted mean of the per-label F1, over the labels that occur as true or
    /// predicted labels (`sklearn.metrics.f1_score(average="macro")`).
    pub macro_f1: f64,
    /// Per label (by name).
    pub per_label: BTreeMap<String, Score>,
}

/// Score predicted label ids against true ones; `names` names the ids.
pub fn classification_scores(
    truth: &[usize],
    predicted: &[usize],
    names: &[String],
) -> ClassificationScores {
    let n = truth.len().min(predicted.len());
    let correct = truth.iter().zip(predicted).filter(|(t, p)| t == p).count();
    let labels: BTreeSet<usize> = truth.iter().chain(predicted).copied().collect();
    let mut per_label = BTreeMap::new();
    for &l in &labels {
        let tp = (0..n)
            .filter(|&i| truth[i] == l && predicted[i] == l)
            .count();
        let pred = predicted.iter().filter(|&&p| p == l).count();
        let actual = truth.iter().filter(|&&t| t == l).count();
        let name = names.get(l).cloned().unwrap_or_else(|| l.to_string());
        per_label.insert(name, Score::from_counts(tp, pred, actual));
    }
    let macro_f1 = if per_label.is_empty() {
        0.0
    } else {
        per_label.values().map(|s| s.f1).sum::<f64>() / per_label.len() as f64
    };
    ClassificationScores {
        accuracy: if n == 0 {
            0.0
        } else {
            correct as f64 / n as f64
        },
        macro_f1,
        per_label,
    }
}

/// Entity-level scores of a tagger.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EntityScores {
    /// Over all entities (seqeval's micro average: `precision_score`, `recall_score`,
    /// `f1_score`).
    pub overall: Score,
    /// Per entity type.
    pub per_type: BTreeMap<String, Score>,
}

/// One entity: its type and first and last tag positions (inclusive).
pub type Chunk = (String, usize, usize);

/// The entities in tag sequences, as seqeval's `get_entities` finds them in its default
/// (lenient, conlleval) mode: IOB1, IOB2 and IOBES tags all read, an `I-` that follows `O` or
/// another type starts an entity, an `E-`/`S-` ends one. Sentences are joined with an `O`
/// between them, so positions count across sentences.
pub fn entities(sentences: &[Vec<String>]) -> Vec<Chunk> {
    let mut seq: Vec<&str> = Vec::new();
    for s in sentences {
        seq.extend(s.iter().map(String::as_str));
        seq.push("O");
    }
    let mut chunks = Vec::new();
    let (mut prev_tag, mut prev_type) = ('O', String::new());
    let mut begin = 0;
    for (i, chunk) in seq.iter().chain(std::iter::once(&"O")).enumerate() {
        let tag = chunk.chars().next().unwrap_or('O');
        let rest: String = chunk.chars().skip(1).collect();
        // `chunk[1:].split('-', maxsplit=1)[-1] or '_'`
        let kind = match rest.split_once('-') {
            Some((_, t)) => t.to_string(),
            None => rest,
        };
        let kind = if kind.is_empty() {
            "_".to_string()
        } else {
            kind
        };
        if end_of_chunk(prev_tag, tag, &prev_type, &kind) {
            chunks.push((prev_type.clone(), begin, i - 1));
        }
        if start_of_chunk(prev_tag, tag, &prev_type, &kind) {
            begin = i;
        }
        prev_tag = tag;
        prev_type = kind;
    }
    chunks
}

fn end_of_chunk(prev: char, tag: char, prev_type: &str, kind: &str) -> bool {
    matches!(prev, 'E' | 'S')
        || (matches!(prev, 'B' | 'I') && matches!(tag, 'B' | 'S' | 'O'))
        || (prev != 'O' && prev != '.' && prev_type != kind)
}

fn start_of_chunk(prev: char, tag: char, prev_type: &str, kind: &str) -> bool {
    matches!(tag, 'B' | 'S')
        || (matches!(prev, 'E' | 'S' | 'O') && matches!(tag, 'E' | 'I'))
        || (tag != 'O' && tag != '.' && prev_type != kind)
}

/// Score predicted tag sequences against true ones, entity by entity (an entity counts when
/// its type and both ends match), as `seqeval.metrics.classification_report` does in its
/// default mode.
pub fn entity_scores(truth: &[Vec<String>], predicted: &[Vec<String>]) -> EntityScores {
    let true_chunks: HashSet<Chunk> = entities(truth).into_iter().collect();
    let pred_chunks: HashSet<Chunk> = entities(predicted).into_iter().collect();
    let types: BTreeSet<&String> = true_chunks
        .iter()
        .chain(pred_chunks.iter())
        .map(|(t, _, _)| t)
        .collect();
    let count = |set: &HashSet<Chunk>, t: &str| set.iter().filter(|c| c.0 == t).count();
    let per_type = types
        .into_iter()
        .map(|t| {
            let tp = true_chunks
                .iter()
                .filter(|c| c.0 == *t && pred_chunks.contains(*c))
                .count();
            (
                t.clone(),
                Score::from_counts(tp, count(&pred_chunks, t), count(&true_chunks, t)),
            )
        })
        .collect();
    let tp = true_chunks.intersection(&pred_chunks).count();
    EntityScores {
        overall: Score::from_counts(tp, pred_chunks.len(), true_chunks.len()),
        per_type,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(s: &[&str]) -> Vec<String> {
        s.iter().map(|t| t.to_string()).collect()
    }

    /// seqeval's README example: `get_entities(['B-PER', 'I-PER', 'O', 'B-LOC'])` and the
    /// classification report of its two-sentence example.
    #[test]
    fn matches_seqeval() {
        assert_eq!(
            entities(&[tags(&["B-PER", "I-PER", "O", "B-LOC"])]),
            vec![("PER".into(), 0, 1), ("LOC".into(), 3, 3)]
        );
        let y_true = vec![
            tags(&["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"]),
            tags(&["B-PER", "I-PER", "O"]),
        ];
        let y_pred = vec![
            tags(&["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"]),
            tags(&["B-PER", "I-PER", "O"]),
        ];
        let s = entity_scores(&y_true, &y_pred);
        assert_eq!(s.overall.precision, 0.5);
        assert_eq!(s.overall.recall, 0.5);
        assert_eq!(s.overall.f1, 0.5);
        assert_eq!(s.per_type["MISC"].f1, 0.0);
        assert_eq!(s.per_type["PER"].f1, 1.0);
        assert_eq!(s.per_type["PER"].support, 1);
    }

    /// Lenient reading of IOB1 and IOBES, as seqeval's default mode.
    #[test]
    fn lenient_chunks() {
        // IOB1: I- after O starts an entity; B- splits two adjacent ones of one type.
        assert_eq!(
            entities(&[tags(&["I-LOC", "I-LOC", "B-LOC", "O", "I-PER"])]),
            vec![
                ("LOC".into(), 0, 1),
                ("LOC".into(), 2, 2),
                ("PER".into(), 4, 4)
            ]
        );
        // IOBES.
        assert_eq!(
            entities(&[tags(&["S-PER", "B-ORG", "I-ORG", "E-ORG", "S-ORG"])]),
            vec![
                ("PER".into(), 0, 0),
                ("ORG".into(), 1, 3),
                ("ORG".into(), 4, 4)
            ]
        );
        // A type change inside a run ends one entity and starts another.
        assert_eq!(
            entities(&[tags(&["B-PER", "I-LOC"]), tags(&["I-PER"])]),
            vec![
                ("PER".into(), 0, 0),
                ("LOC".into(), 1, 1),
                ("PER".into(), 3, 3)
            ]
        );
    }

    #[test]
    fn accuracy_and_macro_f1_as_sklearn() {
        let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        // sklearn: f1_score([0,0,1,1,2],[0,1,1,1,0], average="macro") = 0.4222…
        let s = classification_scores(&[0, 0, 1, 1, 2], &[0, 1, 1, 1, 0], &names);
        assert!((s.accuracy - 0.6).abs() < 1e-12);
        let expected = (0.5 + 0.8 + 0.0) / 3.0;
        assert!((s.macro_f1 - expected).abs() < 1e-12, "{}", s.macro_f1);
        assert_eq!(s.per_label["c"].support, 1);
    }
}
