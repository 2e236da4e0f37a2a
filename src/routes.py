"""What the crawler does with each page: put your own extraction logic here."""

from __future__ import annotations

from urllib.parse import urldefrag

from crawlee.crawlers import BeautifulSoupCrawlingContext
from crawlee.router import Router

router = Router[BeautifulSoupCrawlingContext]()


@router.default_handler
async def default_handler(context: BeautifulSoupCrawlingContext) -> None:
    """Save the page's URL and title, then enqueue the links to follow: to the same host, or as the input's globs say.

    The shared map works behind `enqueue_links`: links another run already knows are not enqueued again, and links
    another run owns are handed over to it.
    """
    context.log.info(f'Processing {context.request.url} ...')
    title = context.soup.title.get_text(strip=True) if context.soup.title else None
    await context.push_data(
        {
            'url': urldefrag(context.request.url).url,  # the URL fetched: a #fragment is not sent to the server
            'loadedUrl': context.request.loaded_url,
            'title': title,
            'depth': context.request.crawl_depth,
        }
    )
    # The links of the input's rules: same host, or its `globs`; minus its `excludeGlobs` (src/crawl_options.py)
    await context.enqueue_links()
