import Logging
import UVLoop

/// Incoming bytes: parsing, dispatch to the call table or the handler, answers.
extension RPCEndpoint {
    func handleReadable(_ bytes: UnsafeRawBufferPointer) -> Int {
        lastReceived = eventLoop.now
        if closing { return bytes.count }
        // Backpressure: take no new message while answers pile up unsent; the
        // peer's bytes wait in the kernel (and its sends back up) until the
        // connection drains below its low-water mark.
        if !connection.isWritable, parser.isAtPacketBoundary,
           bytes[0] == PacketType.message.rawValue || bytes[0] == PacketType.messageBig.rawValue {
            pausedForBackpressure = true
            connection.pauseReading()
            return 0
        }
        parser.inlinePayloadLimit = connection.readBufferCapacity - Wire.bigHeaderSize
        do {
            return try parser.parse(bytes) { packet in self.dispatch(packet) }
        } catch {
            logger.error("protocol violation; closing", metadata: [
                "rpc.peer": "\(connection.remoteAddress.map { "\($0)" } ?? connection.label)",
                "rpc.violation": "\(error)",
            ])
            close(reason: .protocolViolation(error))
            return bytes.count
        }
    }

    @inline(__always)
    func dispatch(_ packet: ParsedPacket) -> Bool {
        switch packet {
        case .message(let id, let payload):
            handleMessage(id: id, payload: payload)
            // Stop after it if its answer made the connection unwritable.
            return !closing && connection.isWritable
        case .response(let id, let payload):
            if let (call, _) = calls.remove(id) {
                call.completion.succeed(on: self, payload)
            } else {
                logger.debug("response for an unknown or expired message id; ignored", metadata: ["rpc.id": "\(id)"])
            }
        case .keepalive:
            break
        case .handshake(let info):
            _peerInfo = info
            logger.debug("peer handshake", metadata: ["rpc.peer-info": "\(info)"])
            sendDeferred()
        }
        return !closing
    }

    func handleMessage(id: UInt16, payload: UnsafeRawBufferPointer) {
        if let callbackHandler {
            // Responders are reused when the handler kept no reference, so the
            // synchronous answer path allocates nothing per message.
            var responder = spareResponder.take() ?? RPCResponder(endpoint: self, messageID: id)
            responder.reuse(for: id)
            handlingDepth += 1
            do {
                // Borrowed, not retained: see `callbackHandler` and `retiredHandlers`.
                try callbackHandler._withUnsafeGuaranteedRef { try $0.body(payload, responder) }
            } catch {
                responder.abandon()
                logger.error("message handler failed; no response sent", metadata: [
                    "rpc.id": "\(id)", "rpc.error": "\(error)",
                ])
            }
            if isKnownUniquelyReferenced(&responder) {
                if !responder.isAnswered && !closing {
                    logger.error("message handler dropped its responder without answering; no response sent",
                                 metadata: ["rpc.id": "\(id)"])
                }
                responder.abandon()
                if !closing { spareResponder = consume responder }
            }
            handlingDepth -= 1
            if handlingDepth == 0 && !retiredHandlers.isEmpty { retiredHandlers.removeAll() }
            return
        }
        switch handler {
        case .callback?:
            break // handled above
        case .async(let handle)?:
            runAsyncHandler(handle, id: id, request: Array(payload))
        case nil:
            if waitingMessages.count < Self.maximumWaitingMessages {
                waitingMessages.append((id, Array(payload)))
            } else {
                logger.warning("message received but no onMessage handler is set and 1024 are waiting; no response sent",
                               metadata: ["rpc.id": "\(id)"])
            }
        }
    }

    /// Runs an async handler in a task on the loop; each message gets its own
    /// task, so a slow answer holds up nothing else.
    func runAsyncHandler(_ handle: @escaping @Sendable ([UInt8]) async throws -> [UInt8],
                                 id: UInt16, request: [UInt8]) {
        let key = nextHandlerTaskKey
        nextHandlerTaskKey &+= 1
        // The task cannot start before this returns (it is queued on this loop),
        // so it is registered before it can unregister itself. It answers
        // through respond(to:with:) directly: no RPCResponder object is needed,
        // as the task's end is the only way the answer can go missing.
        handlerTasks[key] = Task(executorPreference: loop) {
            defer { self.handlerTasks[key] = nil }
            do {
                let response = try await handle(request)
                let sent = response.withUnsafeBytes { raw in
                    Result { () throws(RPCResponseError) in try self.respond(to: id, with: raw) }
                }
                if case .failure(let error) = sent {
                    self.logger.debug("answer not sent", metadata: ["rpc.id": "\(id)", "rpc.error": "\(error)"])
                }
            } catch {
                self.logger.error("message handler failed; no response sent", metadata: [
                    "rpc.id": "\(id)", "rpc.error": "\(error)",
                ])
            }
        }
    }

    /// Installs an async handler (on the loop) and hands it any waiting messages.
    func installAsyncHandler(_ handle: @escaping @Sendable ([UInt8]) async throws -> [UInt8]) {
        setHandler(.async(handle))
        deliverWaitingMessages()
    }

    func deliverWaitingMessages() {
        guard handler != nil, !waitingMessages.isEmpty else { return }
        let waiting = waitingMessages
        waitingMessages.removeAll()
        for message in waiting where !closing {
            message.payload.withUnsafeBytes { handleMessage(id: message.id, payload: $0) }
        }
    }

    func sendDeferred() {
        guard !deferredSends.isEmpty else { return }
        let pending = deferredSends
        deferredSends.removeAll()
        for send in pending {
            send.payload.withUnsafeBytes {
                startCall($0, timeout: send.timeout, closeOnError: send.closeOnError, completion: send.completion)
            }
        }
    }

    /// Writes the answer to message `id` (used by ``RPCResponder``).
    @inline(__always)
    func respond(to id: UInt16, with payload: UnsafeRawBufferPointer) throws(RPCResponseError) {
        checkLoop("RPCResponder.respond")
        guard !closing else { throw .closed(endpoint: label, messageID: id) }
        if payload.count > Wire.maximumShortPayload, let peer = _peerInfo, !peer.acceptsBigPayloads {
            throw .peerTooOld(endpoint: label, messageID: id, payloadSize: payload.count,
                              peerProtocol: peer.protocolVersion)
        }
        do {
            try writeFrame(isResponse: true, id: id, payload: payload)
        } catch {
            throw .closed(endpoint: label, messageID: id)
        }
    }

    /// `isClosing` without the thread check, for deinit paths.
    var isClosingUnchecked: Bool { closing }

    /// Registers a waiter for the end of the endpoint (on the loop).
    func addCloseWaiter(_ waiter: CheckedContinuation<RPCCloseReason, Never>) {
        if _isClosed { waiter.resume(returning: _closeReason ?? .local) } else { closeWaiters.append(waiter) }
    }

    /// Abandons an async call that was cancelled (on the loop): frees its id
    /// (a late response is then ignored) without closing the endpoint.
    func cancelCall(_ call: AsyncCall) {
        guard !call.isFinished else { return }
        if let id = call.id { _ = calls.remove(id) }
        deferredSends.removeAll { if case .async(let c) = $0.completion { return c === call } else { return false } }
        call.finish(.failure(CancellationError()))
    }
}
