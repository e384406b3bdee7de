/// A small strict JSON reader, enough to validate any JSON text and pull
/// the numbers `p` and `k` and the extension names of `x` out of a top-level object. No allocation beyond
/// the key being compared; nesting depth is bounded, so hostile input cannot
/// exhaust the stack.
struct JSONScanner {
    private let bytes: UnsafeRawBufferPointer
    private var i = 0
    private static let maximumDepth = 64

    init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    private func fail(_ what: String) -> ProtocolViolation {
        .malformedHandshake("\(what) at byte \(i) of \(bytes.count)")
    }

    private mutating func skipWhitespace() {
        while i < bytes.count, bytes[i] == 0x20 || bytes[i] == 0x09 || bytes[i] == 0x0A || bytes[i] == 0x0D { i += 1 }
    }

    private mutating func expect(_ c: UInt8) throws(ProtocolViolation) {
        skipWhitespace()
        guard i < bytes.count, bytes[i] == c else { throw fail("expected '\(Character(Unicode.Scalar(c)))'") }
        i += 1
    }

    mutating func parseHandshakeObject() throws(ProtocolViolation) -> (p: Double?, k: Double?, x: RPCExtensions, m: Double?) {
        var p: Double?, k: Double?, x: RPCExtensions = [], m: Double?
        try expect(UInt8(ascii: "{"))
        skipWhitespace()
        if i < bytes.count, bytes[i] == UInt8(ascii: "}") {
            i += 1
        } else {
            while true {
                skipWhitespace()
                let key = try parseString()
                try expect(UInt8(ascii: ":"))
                skipWhitespace()
                if key == "p" || key == "k" {
                    guard i < bytes.count, bytes[i] == UInt8(ascii: "-") || (bytes[i] >= 0x30 && bytes[i] <= 0x39) else {
                        throw .malformedHandshake("\"\(key)\" is not a number")
                    }
                    let value = try parseNumber()
                    if key == "p" { p = value } else { k = value }
                } else if key == "m", i < bytes.count, bytes[i] >= 0x30 && bytes[i] <= 0x39 {
                    m = try parseNumber()
                } else if key == "x", i < bytes.count, bytes[i] == UInt8(ascii: "[") {
                    x = try parseExtensionNames()
                } else {
                    try skipValue(depth: 1)
                }
                if try containerEnds(UInt8(ascii: "}"), "object") { break }
            }
        }
        skipWhitespace()
        guard i == bytes.count else { throw fail("trailing bytes after the object") }
        return (p, k, x, m)
    }

    /// Parses the list of `x`: known names become extensions, anything else is skipped.
    private mutating func parseExtensionNames() throws(ProtocolViolation) -> RPCExtensions {
        var found: RPCExtensions = []
        if opensEmpty(UInt8(ascii: "]")) { return found }
        while true {
            skipWhitespace()
            if i < bytes.count, bytes[i] == UInt8(ascii: "\"") {
                if let known = RPCExtensions(wireName: try parseString()) { found.insert(known) }
            } else {
                try skipValue(depth: 2)
            }
            if try containerEnds(UInt8(ascii: "]"), "array") { return found }
        }
    }

    /// Parses a string; returns it decoded (escapes too: `"\u0070"` is
    /// `"p"`) when it is short, as the keys and names looked for are, else "".
    private mutating func parseString() throws(ProtocolViolation) -> String {
        guard i < bytes.count, bytes[i] == UInt8(ascii: "\"") else { throw fail("expected a string") }
        i += 1
        var decoded: [UInt8] = [] // UTF-8, while at most `longest` bytes
        let longest = 16
        var short = true
        func keep(_ byte: UInt8) {
            if decoded.count == longest { short = false }
            if short { decoded.append(byte) }
        }
        while i < bytes.count {
            let c = bytes[i]
            if c == UInt8(ascii: "\"") {
                i += 1
                return short ? String(decoding: decoded, as: UTF8.self) : ""
            }
            if c < 0x20 { throw fail("control character in string") }
            guard c == UInt8(ascii: "\\") else {
                keep(c)
                i += 1
                continue
            }
            i += 1
            guard i < bytes.count else { break }
            switch bytes[i] {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"):
                keep(bytes[i])
                i += 1
            case UInt8(ascii: "b"): keep(0x08); i += 1
            case UInt8(ascii: "f"): keep(0x0C); i += 1
            case UInt8(ascii: "n"): keep(0x0A); i += 1
            case UInt8(ascii: "r"): keep(0x0D); i += 1
            case UInt8(ascii: "t"): keep(0x09); i += 1
            case UInt8(ascii: "u"):
                guard i + 4 < bytes.count else { throw fail("short \\u escape") }
                var unit: UInt32 = 0
                for j in 1...4 {
                    guard let digit = Self.hexValue(bytes[i + j]) else { throw fail("bad \\u escape") }
                    unit = unit << 4 | digit
                }
                i += 5
                // A surrogate (half of a pair) names nothing looked for: the string is not kept.
                if let scalar = Unicode.Scalar(unit) {
                    for byte in String(Character(scalar)).utf8 { keep(byte) }
                } else {
                    short = false
                }
            default:
                throw fail("bad escape")
            }
        }
        throw fail("unterminated string")
    }

    private static func hexValue(_ c: UInt8) -> UInt32? {
        switch c {
        case 0x30...0x39: return UInt32(c - 0x30)
        case 0x41...0x46: return UInt32(c - 0x41 + 10)
        case 0x61...0x66: return UInt32(c - 0x61 + 10)
        default: return nil
        }
    }

    private mutating func parseNumber() throws(ProtocolViolation) -> Double {
        let start = i
        if i < bytes.count, bytes[i] == UInt8(ascii: "-") { i += 1 }
        func digits(_ s: inout JSONScanner) -> Int {
            let from = s.i
            while s.i < s.bytes.count, s.bytes[s.i] >= 0x30, s.bytes[s.i] <= 0x39 { s.i += 1 }
            return s.i - from
        }
        let intStart = i
        let intDigits = digits(&self)
        guard intDigits > 0 else { throw fail("expected digits") }
        if intDigits > 1 && bytes[intStart] == 0x30 { throw fail("leading zero in number") }
        if i < bytes.count, bytes[i] == UInt8(ascii: ".") {
            i += 1
            guard digits(&self) > 0 else { throw fail("expected digits after '.'") }
        }
        if i < bytes.count, bytes[i] == UInt8(ascii: "e") || bytes[i] == UInt8(ascii: "E") {
            i += 1
            if i < bytes.count, bytes[i] == UInt8(ascii: "+") || bytes[i] == UInt8(ascii: "-") { i += 1 }
            guard digits(&self) > 0 else { throw fail("expected exponent digits") }
        }
        let text = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<i]), as: UTF8.self)
        guard let value = Double(text) else { throw fail("number out of range") }
        return value
    }

    private mutating func skipValue(depth: Int) throws(ProtocolViolation) {
        guard depth <= Self.maximumDepth else { throw fail("nesting deeper than \(Self.maximumDepth)") }
        skipWhitespace()
        guard i < bytes.count else { throw fail("expected a value") }
        switch bytes[i] {
        case UInt8(ascii: "\""):
            _ = try parseString()
        case UInt8(ascii: "{"):
            if opensEmpty(UInt8(ascii: "}")) { return }
            repeat {
                skipWhitespace()
                _ = try parseString()
                try expect(UInt8(ascii: ":"))
                try skipValue(depth: depth + 1)
            } while try !containerEnds(UInt8(ascii: "}"), "object")
        case UInt8(ascii: "["):
            if opensEmpty(UInt8(ascii: "]")) { return }
            repeat {
                try skipValue(depth: depth + 1)
            } while try !containerEnds(UInt8(ascii: "]"), "array")
        case UInt8(ascii: "t"): try literal("true")
        case UInt8(ascii: "f"): try literal("false")
        case UInt8(ascii: "n"): try literal("null")
        default:
            _ = try parseNumber()
        }
    }

    /// At an opening bracket: takes it, and takes `close` too when it follows
    /// at once; true for an empty container.
    private mutating func opensEmpty(_ close: UInt8) -> Bool {
        i += 1
        skipWhitespace()
        if i < bytes.count, bytes[i] == close { i += 1; return true }
        return false
    }

    /// After an element of an array or object (`name`): true at its closing
    /// `close` (taken), false after a `,` (another element follows).
    private mutating func containerEnds(_ close: UInt8, _ name: String) throws(ProtocolViolation) -> Bool {
        skipWhitespace()
        guard i < bytes.count else { throw fail("unterminated \(name)") }
        if bytes[i] == UInt8(ascii: ",") { i += 1; return false }
        if bytes[i] == close { i += 1; return true }
        throw fail("expected ',' or '\(Character(Unicode.Scalar(close)))'")
    }

    private mutating func literal(_ word: StaticString) throws(ProtocolViolation) {
        let n = word.utf8CodeUnitCount
        guard i + n <= bytes.count else { throw fail("truncated literal") }
        for j in 0..<n where bytes[i + j] != word.utf8Start[j] { throw fail("bad literal") }
        i += n
    }
}
