//! The framing every target shares: an input is a small header saying
//! where to cut the stream, then the stream itself.
//!
//! `[n & 31] [n × (u16 LE chunk length, u8 extra)] [stream…]`
//!
//! A chunk length of 0 is read as 1. The rest of the stream after the n
//! chunks is one last chunk. `extra` is free for the target (the
//! connection target moves relay time by it between chunks).
#![allow(dead_code)]

pub struct Split<'a> {
    pub chunks: Vec<(&'a [u8], u8)>,
    pub stream: &'a [u8],
}

pub fn split(data: &[u8]) -> Split<'_> {
    let Some((&n, mut rest)) = data.split_first() else {
        return Split {
            chunks: Vec::new(),
            stream: data,
        };
    };
    let mut cuts = Vec::new();
    for _ in 0..(n & 31) {
        if rest.len() < 3 {
            break;
        }
        let len = u16::from_le_bytes([rest[0], rest[1]]).max(1) as usize;
        cuts.push((len, rest[2]));
        rest = &rest[3..];
    }
    let stream = rest;
    let mut chunks = Vec::new();
    let mut at = 0;
    for (len, extra) in cuts {
        let end = (at + len).min(stream.len());
        chunks.push((&stream[at..end], extra));
        at = end;
    }
    chunks.push((&stream[at..], 0));
    Split { chunks, stream }
}
