/// A JSON text checked and indexed in one pass: a flat array of nodes
/// (the tape) that points into the text, so that decoding reads values
/// straight from the bytes with no tree of objects. An object's node is
/// followed by its members (a key's string node, then the value's nodes);
/// an array's by its elements; each node knows where its subtree ends.
struct JSONTape {
    enum Kind: UInt8 { case object, array, string, number, `true`, `false`, null }

    struct Node {
        var kind: Kind
        /// For a string, whether it holds escapes (it must be unescaped to be read).
        var escaped = false
        /// The bytes of a scalar (a string's without its quotes).
        var start: UInt32
        var end: UInt32
        /// The index of the node after this one's subtree.
        var next: UInt32 = 0
        /// An object's members or an array's elements.
        var count: UInt32 = 0
    }

    /// What made a text unreadable, and where.
    struct SyntaxError: Error, CustomStringConvertible {
        var offset: Int
        var what: String
        var description: String { "not valid JSON at byte \(offset): \(what)" }
    }

    /// The deepest nesting read: deeper texts are refused rather than risk the
    /// stack (the encoder's limit too, so what is read can be written back).
    static let maximumDepth = StreamingEncoder.maximumDepth
    /// The most values one text may hold: the index takes 20 bytes per value,
    /// so a payload of small values cannot make it grow past 20 MiB.
    static let maximumNodes = 1 << 20

    private(set) var nodes: [Node] = []

    /// Indexes `text`, which must hold one JSON value and nothing but whitespace around it.
    init(_ text: UnsafeRawBufferPointer) throws(SyntaxError) {
        guard text.count < Int(UInt32.max) else { throw SyntaxError(offset: 0, what: "text over 4 GiB") }
        nodes.reserveCapacity(16)
        var reader = Reader(text: text)
        reader.skipSpace()
        try reader.value(into: &nodes, depth: 0)
        reader.skipSpace()
        guard reader.position == text.count else { throw SyntaxError(offset: reader.position, what: "more after the value") }
    }

    /// Adds an empty object node at the end and returns its index (for a message without `"m"`).
    mutating func appendEmptyObject() -> Int {
        nodes.append(Node(kind: .object, start: 0, end: 0, next: UInt32(nodes.count + 1)))
        return nodes.count - 1
    }

    private struct Reader {
        let text: UnsafeRawBufferPointer
        var position = 0

        init(text: UnsafeRawBufferPointer) { self.text = text }

        private func failure(_ what: String) -> SyntaxError { SyntaxError(offset: position, what: what) }

        mutating func skipSpace() {
            while position < text.count {
                switch text[position] {
                case 0x20, 0x09, 0x0A, 0x0D: position += 1
                default: return
                }
            }
        }

        mutating func value(into nodes: inout [Node], depth: Int) throws(SyntaxError) {
            guard position < text.count else { throw failure("the text ends where a value should be") }
            guard nodes.count < JSONTape.maximumNodes else { throw failure("more than \(JSONTape.maximumNodes) values") }
            switch text[position] {
            case 0x7B: try container(into: &nodes, depth: depth, object: true)
            case 0x5B: try container(into: &nodes, depth: depth, object: false)
            case 0x22: try string(into: &nodes)
            case 0x74: try literal("true", .true, into: &nodes)
            case 0x66: try literal("false", .false, into: &nodes)
            case 0x6E: try literal("null", .null, into: &nodes)
            case 0x2D, 0x30...0x39: try number(into: &nodes)
            default: throw failure("unexpected byte \(text[position])")
            }
        }

        private mutating func container(into nodes: inout [Node], depth: Int, object: Bool) throws(SyntaxError) {
            guard depth < JSONTape.maximumDepth else { throw failure("nested deeper than \(JSONTape.maximumDepth)") }
            let index = nodes.count
            nodes.append(Node(kind: object ? .object : .array, start: UInt32(position), end: 0))
            position += 1
            let closer: UInt8 = object ? 0x7D : 0x5D
            var count: UInt32 = 0
            skipSpace()
            if position < text.count, text[position] == closer {
                position += 1
            } else {
                while true {
                    skipSpace()
                    if object {
                        guard position < text.count, text[position] == 0x22 else { throw failure("expected a key") }
                        try string(into: &nodes)
                        skipSpace()
                        guard position < text.count, text[position] == 0x3A else { throw failure("expected ':'") }
                        position += 1
                        skipSpace()
                    }
                    try value(into: &nodes, depth: depth + 1)
                    count += 1
                    skipSpace()
                    guard position < text.count else { throw failure("the text ends inside a container") }
                    if text[position] == 0x2C { position += 1; continue }
                    guard text[position] == closer else { throw failure("expected ',' or the container's end") }
                    position += 1
                    break
                }
            }
            nodes[index].end = UInt32(position)
            nodes[index].count = count
            nodes[index].next = UInt32(nodes.count)
        }

        private mutating func string(into nodes: inout [Node]) throws(SyntaxError) {
            position += 1
            let start = position
            var escaped = false
            // Eight bytes at a time while none of them is a quote, a backslash
            // or a control character (the common case: plain text, base64).
            if let base = text.baseAddress {
                while position + 8 <= text.count {
                    let word = UInt64(littleEndian: base.loadUnaligned(fromByteOffset: position, as: UInt64.self))
                    let ones: UInt64 = 0x0101_0101_0101_0101, highs: UInt64 = 0x8080_8080_8080_8080
                    func hasZero(_ x: UInt64) -> Bool { (x &- ones) & ~x & highs != 0 }
                    let special = hasZero(word ^ (ones &* 0x22)) || hasZero(word ^ (ones &* 0x5C))
                        || (word &- ones &* 0x20) & ~word & highs != 0
                    if special { break }
                    position += 8
                }
            }
            while true {
                guard position < text.count else { throw failure("the text ends inside a string") }
                let byte = text[position]
                if byte == 0x22 { break }
                if byte < 0x20 { throw failure("a control character inside a string") }
                if byte == 0x5C {
                    escaped = true
                    position += 1
                    guard position < text.count else { throw failure("the text ends inside an escape") }
                    switch text[position] {
                    case 0x22, 0x5C, 0x2F, 0x62, 0x66, 0x6E, 0x72, 0x74: break
                    case 0x75:
                        guard position + 4 < text.count,
                              (1...4).allSatisfy({ JSONTape.hexValue(text[position + $0]) != nil })
                        else { throw failure("a \\u escape without four hex digits") }
                        position += 4
                    default: throw failure("an unknown escape")
                    }
                }
                position += 1
            }
            nodes.append(Node(kind: .string, escaped: escaped, start: UInt32(start), end: UInt32(position),
                              next: UInt32(nodes.count + 1)))
            position += 1
        }

        private mutating func literal(_ word: StaticString, _ kind: Kind, into nodes: inout [Node]) throws(SyntaxError) {
            let length = word.utf8CodeUnitCount
            guard position + length <= text.count,
                  (0..<length).allSatisfy({ text[position + $0] == word.utf8Start[$0] })
            else { throw failure("expected \(word)") }
            nodes.append(Node(kind: kind, start: UInt32(position), end: UInt32(position + length), next: UInt32(nodes.count + 1)))
            position += length
        }

        /// A number as JSON's grammar has it: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
        private mutating func number(into nodes: inout [Node]) throws(SyntaxError) {
            let start = position
            if text[position] == 0x2D { position += 1 }
            func digits() -> Int {
                let first = position
                while position < text.count, (0x30...0x39).contains(text[position]) { position += 1 }
                return position - first
            }
            let integerStart = position
            let integerDigits = digits()
            guard integerDigits > 0 else { throw failure("a number without digits") }
            if integerDigits > 1, text[integerStart] == 0x30 { throw failure("a number with a leading zero") }
            if position < text.count, text[position] == 0x2E {
                position += 1
                guard digits() > 0 else { throw failure("a fraction without digits") }
            }
            if position < text.count, text[position] == 0x65 || text[position] == 0x45 {
                position += 1
                if position < text.count, text[position] == 0x2B || text[position] == 0x2D { position += 1 }
                guard digits() > 0 else { throw failure("an exponent without digits") }
            }
            nodes.append(Node(kind: .number, start: UInt32(start), end: UInt32(position), next: UInt32(nodes.count + 1)))
        }
    }

    static func hexValue(_ byte: UInt8) -> UInt32? {
        switch byte {
        case 0x30...0x39: return UInt32(byte - 0x30)
        case 0x41...0x46: return UInt32(byte - 0x41 + 10)
        case 0x61...0x66: return UInt32(byte - 0x61 + 10)
        default: return nil
        }
    }

    /// The text of a string node with its escapes resolved (as UTF-8 bytes).
    static func unescape(_ raw: UnsafeRawBufferPointer) -> [UInt8] {
        var output = [UInt8]()
        output.reserveCapacity(raw.count)
        var index = 0
        func scalar(at index: Int) -> UInt32 {
            (1...4).reduce(0) { $0 << 4 | (hexValue(raw[index + $1]) ?? 0) }
        }
        while index < raw.count {
            let byte = raw[index]
            guard byte == 0x5C else { output.append(byte); index += 1; continue }
            let kind = raw[index + 1]
            index += 2
            switch kind {
            case 0x62: output.append(0x08)
            case 0x66: output.append(0x0C)
            case 0x6E: output.append(0x0A)
            case 0x72: output.append(0x0D)
            case 0x74: output.append(0x09)
            case 0x75:
                var value = scalar(at: index - 1)
                index += 4
                // A surrogate pair written as two escapes is one scalar.
                if (0xD800..<0xDC00).contains(value), index + 5 < raw.count, raw[index] == 0x5C, raw[index + 1] == 0x75 {
                    let low = scalar(at: index + 1)
                    if (0xDC00..<0xE000).contains(low) {
                        value = 0x10000 + (value - 0xD800) << 10 + (low - 0xDC00)
                        index += 6
                    }
                }
                let character = Unicode.Scalar(value) ?? "\u{FFFD}" // a lone surrogate: the replacement character
                output.append(contentsOf: String(Character(character)).utf8)
            default: output.append(kind) // \" \\ \/
            }
        }
        return output
    }
}
