//! Builds ClientHello bytes for the parser's unit tests and its fuzz target
//! (compiled only for tests and `--cfg fuzzing`): a well-formed hello by
//! default, with each field settable so a test can bend one rule at a time,
//! and a record layer that fragments a message into payloads of any sizes.
//! Builds bytes only; whether they parse is the tests' business.

/// Extension types the builder knows by name.
pub const SERVER_NAME: u16 = 0;
pub const ALPN: u16 = 16;
pub const PADDING: u16 = 21;
pub const SUPPORTED_VERSIONS: u16 = 43;

/// A ClientHello's fields.
#[derive(Debug, Clone)]
pub struct Builder {
    pub legacy_version: [u8; 2],
    pub random: [u8; 32],
    pub session_id: Vec<u8>,
    pub suites: Vec<u16>,
    pub compression: Vec<u8>,
    /// `None`: the body ends after the compression methods.
    pub extensions: Option<Vec<(u16, Vec<u8>)>>,
}

impl Default for Builder {
    fn default() -> Self {
        Self::new()
    }
}

impl Builder {
    /// A TLS 1.3 hello as browsers send it, minus key shares: 32-byte
    /// session id, three suites, null compression, supported_versions.
    pub fn new() -> Self {
        Self {
            legacy_version: [3, 3],
            random: [7; 32],
            session_id: vec![0xab; 32],
            suites: vec![0x1301, 0x1302, 0x1303],
            compression: vec![0],
            extensions: Some(vec![(SUPPORTED_VERSIONS, vec![4, 3, 4, 3, 3])]),
        }
    }

    /// Adds an extension after those already there.
    pub fn extension(mut self, kind: u16, data: Vec<u8>) -> Self {
        self.extensions
            .get_or_insert_with(Vec::new)
            .push((kind, data));
        self
    }

    /// Adds a server_name extension with one host_name.
    pub fn server_name(self, name: &[u8]) -> Self {
        self.extension(SERVER_NAME, server_names(&[(0, name)]))
    }

    /// Adds an ALPN extension offering `protocols`.
    pub fn alpn(self, protocols: &[&[u8]]) -> Self {
        let mut list = Vec::new();
        for p in protocols {
            list.push(p.len() as u8);
            list.extend_from_slice(p);
        }
        let mut data = Vec::new();
        data.extend_from_slice(&(list.len() as u16).to_be_bytes());
        data.extend_from_slice(&list);
        self.extension(ALPN, data)
    }

    /// Adds a padding extension of `len` zero bytes.
    pub fn padding(self, len: usize) -> Self {
        self.extension(PADDING, vec![0; len])
    }

    /// The ClientHello body, without the handshake header.
    pub fn body(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&self.legacy_version);
        b.extend_from_slice(&self.random);
        b.push(self.session_id.len() as u8);
        b.extend_from_slice(&self.session_id);
        b.extend_from_slice(&((self.suites.len() * 2) as u16).to_be_bytes());
        for s in &self.suites {
            b.extend_from_slice(&s.to_be_bytes());
        }
        b.push(self.compression.len() as u8);
        b.extend_from_slice(&self.compression);
        if let Some(extensions) = &self.extensions {
            let mut all = Vec::new();
            for (kind, data) in extensions {
                all.extend_from_slice(&kind.to_be_bytes());
                all.extend_from_slice(&(data.len() as u16).to_be_bytes());
                all.extend_from_slice(data);
            }
            b.extend_from_slice(&(all.len() as u16).to_be_bytes());
            b.extend_from_slice(&all);
        }
        b
    }

    /// The handshake message: type, 3-byte length, body.
    pub fn message(&self) -> Vec<u8> {
        message(&self.body())
    }

    /// The message in one record.
    pub fn record(&self) -> Vec<u8> {
        records(&self.message(), &[usize::MAX])
    }
}

/// A server_name extension's data: the list of (name_type, name) entries.
pub fn server_names(entries: &[(u8, &[u8])]) -> Vec<u8> {
    let mut list = Vec::new();
    for (kind, name) in entries {
        list.push(*kind);
        list.extend_from_slice(&(name.len() as u16).to_be_bytes());
        list.extend_from_slice(name);
    }
    let mut data = (list.len() as u16).to_be_bytes().to_vec();
    data.extend_from_slice(&list);
    data
}

/// A ClientHello handshake message around `body`.
pub fn message(body: &[u8]) -> Vec<u8> {
    let len = body.len() as u32;
    let mut m = vec![1];
    m.extend_from_slice(&len.to_be_bytes()[1..]);
    m.extend_from_slice(body);
    m
}

/// One TLS 1.0 handshake record header for a payload of `len` bytes.
pub fn record_header(len: usize) -> [u8; 5] {
    let [hi, lo] = (len as u16).to_be_bytes();
    [22, 3, 1, hi, lo]
}

/// `payload` in handshake records whose payload sizes are taken from
/// `sizes` in turn, cycling (each clamped to 1..=16384; the last record
/// takes what is left).
pub fn records(payload: &[u8], sizes: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut sizes = sizes.iter().copied().cycle();
    let mut rest = payload;
    while !rest.is_empty() {
        let size = sizes.next().unwrap_or(usize::MAX).clamp(1, 16384);
        let (this, next) = rest.split_at(size.min(rest.len()));
        out.extend_from_slice(&record_header(this.len()));
        out.extend_from_slice(this);
        rest = next;
    }
    out
}
