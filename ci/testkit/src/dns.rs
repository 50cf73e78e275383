//! A DNS server for the tests of nginx's resolver: it answers every A question with one
//! address and counts the questions.

use std::net::{Ipv4Addr, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub struct DnsServer {
    pub port: u16,
    questions: Arc<AtomicUsize>,
}

impl DnsServer {
    /// Answers every A question for any name with `address` (TTL 60 s); other questions get
    /// an empty answer.
    pub fn start(address: Ipv4Addr) -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        let questions = Arc::new(AtomicUsize::new(0));
        let counted = questions.clone();
        std::thread::spawn(move || {
            let mut query = [0u8; 512];
            while let Ok((n, from)) = socket.recv_from(&mut query) {
                counted.fetch_add(1, Ordering::SeqCst);
                if let Some(answer) = answer(&query[..n], address) {
                    let _ = socket.send_to(&answer, from);
                }
            }
        });
        DnsServer { port, questions }
    }

    /// How many questions it was asked.
    pub fn questions(&self) -> usize {
        self.questions.load(Ordering::SeqCst)
    }
}

/// The response to a one-question query: the question, then an A record pointing back to
/// its name if it asked for one.
fn answer(query: &[u8], address: Ipv4Addr) -> Option<Vec<u8>> {
    let mut end = 12;
    while *query.get(end)? != 0 {
        end += 1 + *query.get(end)? as usize;
    }
    let question_end = end + 5; // the name's final zero, QTYPE, QCLASS
    let qtype = u16::from_be_bytes([*query.get(end + 1)?, *query.get(end + 2)?]);
    let answers: u16 = (qtype == 1).into();
    let mut response = query.get(..question_end)?.to_vec();
    response[2] = 0x81; // a response, recursion desired
    response[3] = 0x80; // recursion available, no error
    response[6..8].copy_from_slice(&answers.to_be_bytes());
    response[8..12].fill(0);
    if answers == 1 {
        response.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        response.extend_from_slice(&address.octets());
    }
    Some(response)
}
