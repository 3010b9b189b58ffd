//! Reading a derivation (`.drv`, Nix's ATerm serialisation) far enough to know which strings
//! it hands its builder.
//!
//! `Derive([outputs],[input drvs],[input sources],"system","builder",[args],[env])`. The
//! parser is strict about structure and lenient about nothing: any deviation is an error, and
//! it never panics or allocates beyond the input's size (it reads untrusted files; see
//! `fuzz/`).

/// The parts of a derivation srcstore looks at.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Derivation {
    pub input_sources: Vec<String>,
    pub builder: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl Derivation {
    /// Every string the builder receives: its path, arguments and environment values.
    pub fn strings(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.builder.as_str())
            .chain(self.args.iter().map(String::as_str))
            .chain(self.env.iter().map(|(_, v)| v.as_str()))
            .chain(self.input_sources.iter().map(String::as_str))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a derivation: {what} at byte {at}")]
pub struct ParseError {
    what: &'static str,
    at: usize,
}

struct Parser<'a> {
    s: &'a [u8],
    at: usize,
}

pub fn parse(text: &[u8]) -> Result<Derivation, ParseError> {
    let mut p = Parser { s: text, at: 0 };
    p.expect(b"Derive(")?;
    p.list(|p| {
        p.expect(b"(")?;
        for i in 0..4 {
            if i > 0 {
                p.expect(b",")?;
            }
            p.string()?;
        }
        p.expect(b")")
    })?;
    p.expect(b",")?;
    p.list(|p| {
        p.expect(b"(")?;
        p.string()?;
        p.expect(b",")?;
        p.list(|p| p.string().map(drop))?;
        p.expect(b")")
    })?;
    p.expect(b",")?;
    let mut d = Derivation::default();
    p.list(|p| p.string().map(|s| d.input_sources.push(s)))?;
    p.expect(b",")?;
    p.string()?; // system
    p.expect(b",")?;
    d.builder = p.string()?;
    p.expect(b",")?;
    p.list(|p| p.string().map(|s| d.args.push(s)))?;
    p.expect(b",")?;
    p.list(|p| {
        p.expect(b"(")?;
        let k = p.string()?;
        p.expect(b",")?;
        let v = p.string()?;
        d.env.push((k, v));
        p.expect(b")")
    })?;
    p.expect(b")")?;
    if p.at != p.s.len() {
        return Err(p.error("trailing bytes"));
    }
    Ok(d)
}

impl Parser<'_> {
    fn error(&self, what: &'static str) -> ParseError {
        ParseError { what, at: self.at }
    }

    fn expect(&mut self, lit: &[u8]) -> Result<(), ParseError> {
        if self.s[self.at..].starts_with(lit) {
            self.at += lit.len();
            Ok(())
        } else {
            Err(self.error("unexpected syntax"))
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }

    /// `[item,item,…]`
    fn list(
        &mut self,
        mut item: impl FnMut(&mut Self) -> Result<(), ParseError>,
    ) -> Result<(), ParseError> {
        self.expect(b"[")?;
        if self.peek() == Some(b']') {
            self.at += 1;
            return Ok(());
        }
        loop {
            item(self)?;
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b']') => {
                    self.at += 1;
                    return Ok(());
                }
                _ => return Err(self.error("expected , or ]")),
            }
        }
    }

    /// `"…"` with Nix's escapes: `\"`, `\\`, `\n`, `\r`, `\t` (any other escaped byte stands
    /// for itself).
    fn string(&mut self) -> Result<String, ParseError> {
        self.expect(b"\"")?;
        let mut out = Vec::new();
        loop {
            let Some(b) = self.peek() else {
                return Err(self.error("unterminated string"));
            };
            self.at += 1;
            match b {
                b'"' => break,
                b'\\' => {
                    let Some(e) = self.peek() else {
                        return Err(self.error("unterminated escape"));
                    };
                    self.at += 1;
                    out.push(match e {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        other => other,
                    });
                }
                other => out.push(other),
            }
        }
        String::from_utf8(out).map_err(|_| self.error("string is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"Derive([("out","/nix/store/abc-x","","")],[("/nix/store/def-bb.drv",["out"])],["/nix/store/ghi-src"],"x86_64-linux","/nix/store/jkl-busybox/bin/sh",["-c","cd \"$src\" && echo hi\\there\n"],[("builder","/nix/store/jkl-busybox/bin/sh"),("src","/run/srcstore/p-1/0m7wq1c-proj"),("empty","")])"#;

    #[test]
    fn a_real_shaped_derivation_yields_its_strings() {
        let d = parse(SAMPLE.as_bytes()).unwrap();
        assert_eq!(d.builder, "/nix/store/jkl-busybox/bin/sh");
        assert_eq!(d.args, vec!["-c", "cd \"$src\" && echo hi\\there\n"]);
        assert_eq!(d.input_sources, vec!["/nix/store/ghi-src"]);
        assert!(d
            .env
            .contains(&("src".into(), "/run/srcstore/p-1/0m7wq1c-proj".into())));
        assert!(d.strings().any(|s| s == "/run/srcstore/p-1/0m7wq1c-proj"));
    }

    #[test]
    fn anything_else_is_an_error_not_a_panic() {
        for bad in [
            "",
            "Derive(",
            "Derive([],[],[],\"s\",\"b\",[],[])x",
            "Derive([],[],[],\"s",
            "{}",
            "Derive([(],[],[],\"\",\"\",[],[])",
        ] {
            assert!(parse(bad.as_bytes()).is_err(), "{bad:?}");
        }
        // Every prefix of a valid derivation is rejected.
        for i in 0..SAMPLE.len() {
            assert!(parse(&SAMPLE.as_bytes()[..i]).is_err());
        }
        assert!(parse(b"Derive([],[],[],\"s\",\"b\",[],[])").is_ok());
    }
}
