// aedes as a standalone MQTT broker for Forewarn's interoperability tests:
//   node server.js PORT [HOST]
// MQTT 3.1.1 only, no shared subscriptions ($share/... is an ordinary topic to it), sessions and
// QoS 1 queues in memory (aedes-persistence): a persistent session survives a client's
// reconnect while the broker runs, nothing survives the broker. Otherwise aedes' own defaults,
// as a plant running it would have them. Prints "listening on HOST:PORT" once it accepts
// connections; SIGTERM or SIGINT closes it.
import net from 'node:net'
import { Aedes } from 'aedes'

const port = Number.parseInt(process.argv[2] ?? '', 10)
const host = process.argv[3] ?? '127.0.0.1'
if (!Number.isInteger(port) || port < 1 || port > 65535) {
  console.error('usage: node server.js PORT [HOST]')
  process.exit(2)
}

const broker = await Aedes.createBroker()
const server = net.createServer(broker.handle)

broker.on('clientError', (client, err) => {
  console.error(`client error ${client ? client.id : '?'}: ${err.message}`)
})
broker.on('connectionError', (client, err) => {
  console.error(`connection error ${client ? client.id : '?'}: ${err.message}`)
})

server.on('error', (err) => {
  console.error(`aedes cannot listen on ${host}:${port}: ${err.message}`)
  process.exit(1)
})

server.listen(port, host, () => {
  console.log(`aedes ${broker.id} listening on ${host}:${port}`)
})

function stop (signal) {
  console.log(`aedes stopping (${signal})`)
  server.close()
  broker.close(() => process.exit(0))
  setTimeout(() => process.exit(0), 5000).unref()
}
process.on('SIGTERM', () => stop('SIGTERM'))
process.on('SIGINT', () => stop('SIGINT'))
