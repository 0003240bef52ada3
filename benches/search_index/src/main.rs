//! Search index benchmark: the same 100,000 generated messages indexed (a) as Hearth's
//! RocksDB inverted index (`roomtermpos_posting`: `u64 room ++ term ++ 0xFF ++ u64 position`
//! → `u64 short event ++ u8 field ++ u8 tf ++ u8 length`) and (b) with tantivy; reports the
//! size on disk, the cost per send (in batches of 1,000, then 2,000 sends committed one by one
//! with a synced commit each, on top of the full index) and query latency p50/p99.

#[path = "../../../src/services/search/tokenize.rs"]
#[allow(dead_code)]
mod tokenize;

use std::{
    collections::HashMap,
    path::Path,
    time::{Duration, Instant},
};

const MESSAGES: usize = 100_000;
const SINGLE_SENDS: usize = 2_000;
const ROOMS: u64 = 20;
const BATCH: usize = 1_000;
const QUERY_RUNS: usize = 200;
const SEP: u8 = 0xFF;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// 600 words: some real ones (a few accented), the rest made of syllables.
fn vocabulary() -> Vec<String> {
    let real = [
        "the", "a", "to", "and", "is", "of", "in", "it", "you", "that", "for", "on", "we", "this", "with", "be",
        "have", "are", "not", "but", "meeting", "tomorrow", "release", "server", "deploy", "coffee", "café",
        "lunch", "bug", "fix", "review", "merge", "build", "test", "matrix", "room", "message", "search",
        "rocksdb", "index", "naïve", "résumé", "über", "weekend", "ticket", "password", "holiday", "kubernetes",
    ];
    let syll = ["ka", "lo", "mi", "ter", "zu", "pra", "vel", "no", "shi", "ran", "dor", "ex", "qui", "bo", "len"];
    let mut words: Vec<String> = real.iter().map(|s| s.to_string()).collect();
    let mut rng = Rng(7);
    while words.len() < 600 {
        let n = 2 + (rng.next() % 3) as usize;
        let w: String = (0..n).map(|_| syll[(rng.next() % syll.len() as u64) as usize]).collect();
        if !words.contains(&w) {
            words.push(w);
        }
    }
    words
}

/// Zipf (s = 1.07) over the vocabulary: cumulative weights for sampling.
fn zipf_cdf(n: usize) -> Vec<f64> {
    let mut acc = 0.0;
    let mut cdf: Vec<f64> = (1..=n)
        .map(|r| {
            acc += 1.0 / (r as f64).powf(1.07);
            acc
        })
        .collect();
    for c in &mut cdf {
        *c /= acc;
    }
    cdf
}

struct Message {
    room: u64,
    position: u64,
    body: String,
}

fn messages(count: usize, seed: u64) -> Vec<Message> {
    let words = vocabulary();
    let cdf = zipf_cdf(words.len());
    let mut rng = Rng(seed);
    (0..count)
        .map(|i| {
            let target = 20 + (rng.next() % 181) as usize;
            let mut body = String::new();
            while body.len() < target {
                let u = rng.unit();
                let w = &words[cdf.partition_point(|c| *c < u).min(words.len() - 1)];
                if !body.is_empty() {
                    body.push(' ');
                }
                if rng.next() % 10 == 0 {
                    let mut c = w.chars();
                    let first: String = c.next().into_iter().flat_map(char::to_uppercase).collect();
                    body.push_str(&(first + c.as_str()));
                } else {
                    body.push_str(w);
                }
            }
            if rng.next() % 4 == 0 {
                body.push('.');
            }
            Message {
                room: 1 + (rng.next() % ROOMS),
                position: i as u64 + 1,
                body,
            }
        })
        .collect()
}

fn dir_size(path: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(path).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() { dir_size(&entry.path()) } else { meta.len() };
    }
    total
}

fn percentile(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort();
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[i].as_secs_f64() * 1e6
}

// ---------- (a) RocksDB inverted index, Hearth's layout ----------

const POSTINGS: &str = "roomtermpos_posting";
const PDUS: &str = "shorteventid_pdu";

fn posting_key(room: u64, term: &str, position: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(17 + term.len());
    k.extend_from_slice(&room.to_be_bytes());
    k.extend_from_slice(term.as_bytes());
    k.push(SEP);
    k.extend_from_slice(&position.to_be_bytes());
    k
}

/// The postings of one text: term → (tf, length), as Hearth computes them.
fn postings(text: &str) -> Vec<(String, u8, u8)> {
    let terms = tokenize::terms(text);
    let len = terms.len().min(255) as u8;
    let mut tf: HashMap<String, u32> = HashMap::new();
    for t in terms {
        *tf.entry(t).or_default() += 1;
    }
    tf.into_iter().map(|(t, n)| (t, n.min(255) as u8, len)).collect()
}

fn rocks_options() -> rocksdb::Options {
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    let mut block = rocksdb::BlockBasedOptions::default();
    block.set_bloom_filter(10.0, false);
    opts.set_block_based_table_factory(&block);
    opts.set_write_buffer_size(4 << 20);
    opts
}

fn rocks_queue(db: &rocksdb::DB, batch: &mut rocksdb::WriteBatch, m: &Message, with_index: bool) {
    let short_event = m.position;
    // The event itself (its JSON is about 300 bytes more than its body).
    let pdu = format!("{{\"content\":{{\"body\":{:?},\"msgtype\":\"m.text\"}},\"padding\":\"{}\"}}", m.body, "x".repeat(300));
    batch.put_cf(db.cf_handle(PDUS).unwrap(), short_event.to_be_bytes(), pdu.as_bytes());
    if with_index {
        let cf = db.cf_handle(POSTINGS).unwrap();
        for (term, tf, len) in postings(&m.body) {
            let mut value = short_event.to_be_bytes().to_vec();
            value.extend_from_slice(&[1, tf, len]);
            batch.put_cf(cf, posting_key(m.room, &term, m.position), value);
        }
    }
}

/// The query Hearth runs: every term in every room of the searcher (the last one as a
/// prefix), all terms required, BM25-like score without idf; returns (count, top 10).
fn rocks_query(db: &rocksdb::DB, terms: &[String], prefix_last: bool) -> (usize, Vec<u64>) {
    let cf = db.cf_handle(POSTINGS).unwrap();
    let mut hits: Vec<(f64, u64)> = Vec::new();
    for room in 1..=ROOMS {
        let mut acc: HashMap<u64, (usize, f64)> = HashMap::new();
        for (i, term) in terms.iter().enumerate() {
            let mut prefix = room.to_be_bytes().to_vec();
            prefix.extend_from_slice(term.as_bytes());
            let is_prefix = prefix_last && i == terms.len() - 1;
            if !is_prefix {
                prefix.push(SEP);
            }
            let mut seen = std::collections::HashSet::new();
            for item in db.prefix_iterator_cf(cf, &prefix) {
                let (k, v) = item.unwrap();
                if !k.starts_with(&prefix) {
                    break;
                }
                let position = u64::from_be_bytes(k[k.len() - 8..].try_into().unwrap());
                let (tf, len) = (v[9] as f64, v[10] as f64);
                let s = tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * len / 12.0));
                if seen.insert(position) {
                    let e = acc.entry(position).or_default();
                    if e.0 == i {
                        e.0 += 1;
                        e.1 += s;
                    }
                }
            }
        }
        hits.extend(acc.into_iter().filter(|(_, (n, _))| *n == terms.len()).map(|(p, (_, s))| (s, p)));
    }
    let count = hits.len();
    hits.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)));
    (count, hits.into_iter().take(10).map(|(_, p)| p).collect())
}

const POINT_READS: usize = 1024;

/// One term's postings in one room: position → score (the best term for a prefix).
fn rocks_term(db: &rocksdb::DB, room: u64, term: &str, prefix: bool, limit: usize) -> HashMap<u64, f64> {
    let cf = db.cf_handle(POSTINGS).unwrap();
    let mut key = room.to_be_bytes().to_vec();
    key.extend_from_slice(term.as_bytes());
    if !prefix {
        key.push(SEP);
    }
    let mut out: HashMap<u64, f64> = HashMap::new();
    // Exact terms newest first (as Hearth reads them), prefixes in key order.
    let iter: Box<dyn Iterator<Item = Result<(Box<[u8]>, Box<[u8]>), rocksdb::Error>>> = if prefix {
        Box::new(db.prefix_iterator_cf(cf, &key))
    } else {
        let mut end = key.clone();
        end.extend_from_slice(&[0xFF; 9]);
        Box::new(db.iterator_cf(cf, rocksdb::IteratorMode::From(&end, rocksdb::Direction::Reverse)))
    };
    for item in iter {
        let (k, v) = item.unwrap();
        if !k.starts_with(&key) || out.len() == limit {
            break;
        }
        let position = u64::from_be_bytes(k[k.len() - 8..].try_into().unwrap());
        let (tf, len) = (v[9] as f64, v[10] as f64);
        let s = tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * len / 12.0));
        let e = out.entry(position).or_insert(s);
        if s > *e {
            *e = s;
        }
    }
    out
}

/// The postings of an exact term for the given events only (point reads).
fn point_reads(db: &rocksdb::DB, room: u64, term: &str, found: &HashMap<u64, f64>) -> HashMap<u64, f64> {
    let cf = db.cf_handle(POSTINGS).unwrap();
    let positions: Vec<u64> = found.keys().copied().collect();
    let keys: Vec<Vec<u8>> = positions.iter().map(|p| posting_key(room, term, *p)).collect();
    positions
        .into_iter()
        .zip(db.multi_get_cf(keys.iter().map(|k| (cf, k))))
        .filter_map(|(p, v)| {
            v.unwrap().map(|v| {
                let (tf, len) = (v[9] as f64, v[10] as f64);
                (p, tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * len / 12.0)))
            })
        })
        .collect()
}

/// Hearth's query plan (`services::search::room_matches`): terms read longest first, and
/// once at most 1,024 candidates are left, a remaining exact term with more than eight
/// postings per candidate is point-read for them only.
fn rocks_query_planned(db: &rocksdb::DB, terms: &[String], prefix_last: bool) -> (usize, Vec<u64>) {
    let last = terms.len() - 1;
    let mut hits: Vec<(f64, u64)> = Vec::new();
    for room in 1..=ROOMS {
        let mut order: Vec<usize> = (0..terms.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(terms[i].len()));
        let mut found: Option<HashMap<u64, f64>> = None;
        for i in order {
            let is_prefix = prefix_last && i == last;
            let m = match &found {
                Some(f) if f.is_empty() => break,
                Some(f) if !is_prefix && f.len() <= POINT_READS => {
                    let bound = (f.len() * 8).max(64);
                    let scanned = rocks_term(db, room, &terms[i], false, bound);
                    if scanned.len() < bound { scanned } else { point_reads(db, room, &terms[i], f) }
                }
                _ => rocks_term(db, room, &terms[i], is_prefix, 50_000),
            };
            found = Some(match found {
                None => m,
                Some(mut f) => {
                    f.retain(|p, _| m.contains_key(p));
                    f.iter_mut().for_each(|(p, s)| *s += m[p]);
                    f
                }
            });
        }
        hits.extend(found.unwrap_or_default().into_iter().map(|(p, s)| (s, p)));
    }
    let count = hits.len();
    hits.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)));
    (count, hits.into_iter().take(10).map(|(_, p)| p).collect())
}

fn rocks_bench(base: &Path, msgs: &[Message], extra: &[Message], queries: &[(&str, bool)]) {
    for with_index in [false, true] {
        let path = base.join(if with_index { "rocks" } else { "rocks-baseline" });
        let _ = std::fs::remove_dir_all(&path);
        let db = rocksdb::DB::open_cf(&rocks_options(), &path, [POSTINGS, PDUS]).unwrap();
        let mut synced = rocksdb::WriteOptions::default();
        synced.set_sync(true);
        let start = Instant::now();
        for chunk in msgs.chunks(BATCH) {
            let mut batch = rocksdb::WriteBatch::default();
            for m in chunk {
                rocks_queue(&db, &mut batch, m, with_index);
            }
            db.write_opt(batch, &synced).unwrap();
        }
        let batched = start.elapsed();
        let start = Instant::now();
        for m in extra {
            let mut batch = rocksdb::WriteBatch::default();
            rocks_queue(&db, &mut batch, m, with_index);
            db.write_opt(batch, &synced).unwrap();
        }
        let single = start.elapsed();
        for cf in [POSTINGS, PDUS] {
            db.flush_cf(db.cf_handle(cf).unwrap()).unwrap();
            db.compact_range_cf(db.cf_handle(cf).unwrap(), None::<&[u8]>, None::<&[u8]>);
        }
        let postings_size = db
            .property_int_value_cf(db.cf_handle(POSTINGS).unwrap(), "rocksdb.total-sst-files-size")
            .unwrap()
            .unwrap_or(0);
        println!(
            "rocksdb {}: batched {:.1} µs/msg, one synced batch per send {:.1} µs/send, postings SST {:.1} MiB, whole dir {:.1} MiB",
            if with_index { "event+index" } else { "event only (baseline)" },
            batched.as_secs_f64() * 1e6 / msgs.len() as f64,
            single.as_secs_f64() * 1e6 / extra.len() as f64,
            postings_size as f64 / 1048576.0,
            dir_size(&path) as f64 / 1048576.0
        );
        if with_index {
            for (q, prefix) in queries {
                let terms = tokenize::terms(q);
                for planned in [false, true] {
                    let mut samples = Vec::new();
                    let mut count = 0;
                    for _ in 0..QUERY_RUNS {
                        let t = Instant::now();
                        count = if planned {
                            rocks_query_planned(&db, &terms, *prefix).0
                        } else {
                            rocks_query(&db, &terms, *prefix).0
                        };
                        samples.push(t.elapsed());
                    }
                    println!(
                        "rocksdb query ({}) {:?}{}: {} hits, p50 {:.0} µs, p99 {:.0} µs",
                        if planned { "longest first + point reads" } else { "full scans" },
                        q,
                        if *prefix { " (last term prefix)" } else { "" },
                        count,
                        percentile(&mut samples, 0.5),
                        percentile(&mut samples, 0.99)
                    );
                }
            }
        }
    }
}

// ---------- (b) tantivy ----------

fn tantivy_bench(base: &Path, msgs: &[Message], extra: &[Message], queries: &[(&str, bool)]) {
    use tantivy::{
        Index, IndexWriter, TantivyDocument, Term,
        collector::{Count, TopDocs},
        query::{BooleanQuery, Occur, PhrasePrefixQuery, Query, TermQuery},
        schema::{FAST, INDEXED, IndexRecordOption, STORED, Schema, TEXT},
        tokenizer::{AsciiFoldingFilter, LowerCaser, SimpleTokenizer, TextAnalyzer},
    };
    let path = base.join("tantivy");
    let _ = std::fs::remove_dir_all(&path);
    std::fs::create_dir_all(&path).unwrap();
    let mut builder = Schema::builder();
    let text_options = TEXT.set_indexing_options(
        tantivy::schema::TextFieldIndexing::default()
            .set_tokenizer("hearth")
            .set_index_option(IndexRecordOption::WithFreqsAndPositions),
    );
    let body = builder.add_text_field("body", text_options);
    let room = builder.add_u64_field("room", INDEXED | FAST);
    let position = builder.add_u64_field("position", INDEXED | FAST | STORED);
    let schema = builder.build();
    let index = Index::create_in_dir(&path, schema).unwrap();
    index.tokenizers().register(
        "hearth",
        TextAnalyzer::builder(SimpleTokenizer::default())
            .filter(LowerCaser)
            .filter(AsciiFoldingFilter)
            .build(),
    );
    let mut writer: IndexWriter = index.writer_with_num_threads(1, 50_000_000).unwrap();
    let doc = |m: &Message| {
        let mut d = TantivyDocument::default();
        d.add_text(body, &m.body);
        d.add_u64(room, m.room);
        d.add_u64(position, m.position);
        d
    };
    let start = Instant::now();
    for chunk in msgs.chunks(BATCH) {
        for m in chunk {
            writer.add_document(doc(m)).unwrap();
        }
        writer.commit().unwrap();
    }
    let batched = start.elapsed();
    let start = Instant::now();
    for m in extra {
        writer.add_document(doc(m)).unwrap();
        writer.commit().unwrap();
    }
    let single = start.elapsed();
    writer.wait_merging_threads().unwrap();
    println!(
        "tantivy: batched {:.1} µs/msg (commit per {BATCH}), commit per send {:.1} µs/send, index dir {:.1} MiB",
        batched.as_secs_f64() * 1e6 / msgs.len() as f64,
        single.as_secs_f64() * 1e6 / extra.len() as f64,
        dir_size(&path) as f64 / 1048576.0
    );
    let reader = index.reader().unwrap();
    let searcher = reader.searcher();
    println!("tantivy segments after merges: {}", searcher.segment_readers().len());
    for (q, prefix) in queries {
        let terms = tokenize::terms(q);
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        for (i, t) in terms.iter().enumerate() {
            let term = Term::from_field_text(body, t);
            if *prefix && i == terms.len() - 1 {
                clauses.push((Occur::Must, Box::new(PhrasePrefixQuery::new(vec![term]))));
            } else {
                clauses.push((Occur::Must, Box::new(TermQuery::new(term, IndexRecordOption::WithFreqs))));
            }
        }
        // The searcher's rooms: all of them, as in the RocksDB run.
        let rooms: Vec<(Occur, Box<dyn Query>)> = (1..=ROOMS)
            .map(|r| {
                (
                    Occur::Should,
                    Box::new(TermQuery::new(Term::from_field_u64(room, r), IndexRecordOption::Basic)) as Box<dyn Query>,
                )
            })
            .collect();
        clauses.push((Occur::Must, Box::new(BooleanQuery::new(rooms))));
        let query = BooleanQuery::new(clauses);
        let mut samples = Vec::new();
        let mut count = 0;
        for _ in 0..QUERY_RUNS {
            let t = Instant::now();
            let (n, _top) = searcher.search(&query, &(Count, TopDocs::with_limit(10))).unwrap();
            count = n;
            samples.push(t.elapsed());
        }
        println!(
            "tantivy query {:?}{}: {} hits, p50 {:.0} µs, p99 {:.0} µs",
            q,
            if *prefix { " (last term prefix)" } else { "" },
            count,
            percentile(&mut samples, 0.5),
            percentile(&mut samples, 0.99)
        );
    }
}

fn main() {
    let base = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("hearth-search-bench"));
    std::fs::create_dir_all(&base).unwrap();
    let msgs = messages(MESSAGES, 42);
    let extra: Vec<Message> = messages(SINGLE_SENDS, 43)
        .into_iter()
        .enumerate()
        .map(|(i, mut m)| {
            m.position = (MESSAGES + i + 1) as u64;
            m
        })
        .collect();
    let chars: usize = msgs.iter().map(|m| m.body.len()).sum();
    println!(
        "{} messages in {ROOMS} rooms, {:.0} bytes of body on average; first: {:?}",
        msgs.len(),
        chars as f64 / msgs.len() as f64,
        msgs[0].body
    );
    let queries: &[(&str, bool)] = &[
        ("the", false),
        ("meeting", false),
        ("kubernetes", false),
        ("Café", false),
        ("deploy server", false),
        ("the release tomorrow", false),
        ("password holiday", false),
        ("the kubernetes", false),
        ("meeting the", false),
        ("kube", true),
        ("review mer", true),
    ];
    rocks_bench(&base, &msgs, &extra, queries);
    tantivy_bench(&base, &msgs, &extra, queries);
}
